#!/usr/bin/env bash
# Install runbroker alone and with each extra into a fresh virtual environment, then import it
# and open, fill and read an SQLite and a folder catalog: what `pip install runbroker[...]`
# gives a newcomer must work without the test dependencies. Usage: scripts/check-extras.sh
# [extra ...] (default: all of them). PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=("$@")
[ ${#extras[@]} -gt 0 ] || extras=(core client server export postgres mongo demo all)
work=$(mktemp -d "${TMPDIR:-/tmp}/runbroker-extras.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Resolve and fetch once, from the package index, what every extra needs (`.[all]` and the
# extras it does not hold): the environments then install from those files alone, in
# seconds each, and each still resolves its own extra.
start=$SECONDS
wanted=(".")
for extra in "${extras[@]}"; do [ "$extra" = core ] || wanted+=(".[$extra]"); done
if ! "$PYTHON" -m pip wheel --quiet --wheel-dir "$work/wheels" "${wanted[@]}" \
    >"$work/pip-wheel.log" 2>&1; then
    echo "check-extras: pip could not resolve ${wanted[*]}:" >&2
    tail -n 30 "$work/pip-wheel.log" >&2
    exit 1
fi
wheel=$(ls "$work"/wheels/runbroker-*.whl)
echo "check-extras: resolved and fetched in $((SECONDS - start)) s"

smoke='
import sys, tempfile, pathlib
import runbroker
from event_model import compose_run

def one_run(cat):
    run = compose_run(metadata={"plan_name": "check"})
    cat.insert("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"dtype": "number", "shape": [], "source": "x"}}
    )
    cat.insert("descriptor", desc.descriptor_doc)
    for i in range(3):
        cat.insert("event", desc.compose_event(data={"x": float(i)}, timestamps={"x": 0.0}))
    cat.insert("stop", run.compose_stop())
    return run.start_doc["uid"]

folder = pathlib.Path(tempfile.mkdtemp())
for where in (str(folder / "runs.db"), str(folder / "runs") + "/"):
    cat = runbroker.open(where)
    uid = one_run(cat)
    cat.close()  # written out: a new catalog object sees it
    assert list(runbroker.open(where)[uid].primary.read()["x"].values) == [0.0, 1.0, 2.0]
print("runbroker", runbroker.__version__, "works with", sys.argv[1])
'

# The server and the remote client, with the server extra: a catalog served by uvicorn on
# loopback, read through runbroker.open(URL).
served='
import socket, tempfile, pathlib, threading, time
import uvicorn, runbroker
from event_model import compose_run
from runbroker.server import Settings, build_app

cat = runbroker.open(pathlib.Path(tempfile.mkdtemp()) / "runs.db")
run = compose_run()
cat.insert("start", run.start_doc)
cat.insert("stop", run.compose_stop())
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
app = build_app(cat, Settings(api_key="k"))
server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.05)
remote = runbroker.open(f"http://127.0.0.1:{port}", api_key="k", cache=False)
assert remote[-1].uid == run.start_doc["uid"]
server.should_exit = True
print("the server and its client work")
'
# Without the client extra, a URL is refused naming the extra to install.
no_client='
import runbroker
try:
    runbroker.open("http://127.0.0.1:1")
except runbroker.MissingDependencyError as err:
    assert "runbroker[client]" in str(err), err
else:
    raise SystemExit("opening a URL without httpx did not say what to install")
'

for extra in "${extras[@]}"; do
    t0=$SECONDS
    venv="$work/venv-$extra"
    "$PYTHON" -m venv "$venv"
    spec="$wheel"
    [ "$extra" = core ] || spec="$wheel[$extra]"
    if ! "$venv/bin/pip" install --quiet --no-compile --no-index --find-links "$work/wheels" "$spec" \
        >"$work/pip-$extra.log" 2>&1; then
        echo "check-extras: pip install 'runbroker[$extra]' failed:" >&2
        tail -n 30 "$work/pip-$extra.log" >&2
        exit 1
    fi
    (cd "$work" && "$venv/bin/python" -W error::DeprecationWarning:runbroker -c "$smoke" "$extra")
    if [ "$extra" = postgres ] || [ "$extra" = all ]; then
        "$venv/bin/python" -c "import psycopg"
    fi
    if [ "$extra" = server ] || [ "$extra" = all ]; then
        (cd "$work" && "$venv/bin/python" -c "$served")
    elif [ "$extra" = client ]; then
        "$venv/bin/python" -c "import runbroker.client, runbroker.cli_cache"
    elif [ "$extra" = core ]; then
        "$venv/bin/python" -c "$no_client"
    fi
    rm -rf "$venv"
    echo "check-extras: $extra in $((SECONDS - t0)) s"
done
echo "check-extras: ${#extras[@]} environments in $((SECONDS - start)) s"
