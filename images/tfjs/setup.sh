# Node.js and the TF.js packages the artifact runs with: Debian's nodejs (18.x), and `npm ci` of
# the committed setup.package.json + setup.package-lock.json (every package pinned with its
# integrity hash: npm's --require-hashes) into /opt/timmx/node/node_modules; @tensorflow is linked
# into /usr/share/nodejs, one of Debian's node's global folders, where require() finds it from
# any script. npm is needed only to install them: purged in the same layer. No install scripts.
set -eu
apt-get update
apt-get install -y --no-install-recommends nodejs npm
mkdir -p /opt/timmx/node
cp /opt/timmx/setup/setup.package.json /opt/timmx/node/package.json
cp /opt/timmx/setup/setup.package-lock.json /opt/timmx/node/package-lock.json
cd /opt/timmx/node
npm ci --ignore-scripts --omit=dev --no-audit --no-fund --cache /tmp/npm-cache
rm -rf /tmp/npm-cache
apt-get purge -y --auto-remove npm
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin
mkdir -p /usr/share/nodejs
ln -s /opt/timmx/node/node_modules/@tensorflow /usr/share/nodejs/@tensorflow
cd / && node -e "require('@tensorflow/tfjs-converter')"
