# A toolchain's system step, run as root in its image after its Python packages (the Dockerfile's
# `RUN sh setup.sh`), with the recipe's `setup.*` files beside it in /opt/timmx/setup: Debian
# packages, Node.js modules... A recipe that needs one brings its own setup.sh; this shared one,
# for the others, does nothing.
true
