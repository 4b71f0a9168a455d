#!/bin/sh
# Runs one command of the image build (uv downloading packages or Python) with the build's
# optional secrets applied, for a build behind a TLS-intercepting proxy or from a mirror:
#   ca_bundle  a PEM bundle of the CAs to trust (the proxy's among them)
#   index_url  the package index to use instead of PyPI (it may hold credentials)
# Build secrets are mounted for one RUN only, at /run/secrets/<id>, and never stored in a
# layer; without them the build uses uv's own roots and PyPI. See README "Deploy".
set -eu
if [ -s /run/secrets/ca_bundle ]; then
  SSL_CERT_FILE=/run/secrets/ca_bundle
  export SSL_CERT_FILE
fi
if [ -s /run/secrets/index_url ]; then
  UV_DEFAULT_INDEX=$(cat /run/secrets/index_url)
  export UV_DEFAULT_INDEX
fi
exec "$@"
