# rknn-toolkit2 requires opencv-python (not the headless build), and cv2 needs libGL and GLib on
# import: Debian's.
set -eu
apt-get update
apt-get install -y --no-install-recommends libgl1 libglib2.0-0
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin
