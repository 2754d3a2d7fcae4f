#!/usr/bin/env bash
# Install runbroker alone and with each extra into a fresh virtual environment, then import it
# and open, fill and read an SQLite and a folder catalog: what `pip install runbroker[...]`
# gives a newcomer must work without the test dependencies. Usage: scripts/check-extras.sh
# [extra ...] (default: all of them). PYTHON picks the interpreter (default python3), JOBS how
# many environments are checked at once (default 2), INSTALLER=pip skips uv.
#
# uv does the work when it is on PATH or can be installed from the package index into this
# run's scratch folder: it resolves and fetches in seconds, and installs an environment from
# its cache by hard links in about one. pip does the same, slower, when uv cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
INSTALLER=${INSTALLER:-uv}
extras=("$@")
# The largest environments first: two at a time, the small ones fill in beside them.
[ ${#extras[@]} -gt 0 ] || extras=(all server demo postgres mongo client export core)
work=$(mktemp -d "${TMPDIR:-/tmp}/runbroker-extras.XXXXXX")
# An interrupted run stops the environments it started before removing their folder.
trap 'kill $(jobs -p) 2>/dev/null || true; wait; rm -rf "$work"' EXIT
python=$("$PYTHON" -c 'import sys; print(sys.executable)')
# uv must build every environment on this interpreter, never fetch a Python of its own.
export UV_PYTHON_DOWNLOADS=never
start=$SECONDS

uv=""
if [ "$INSTALLER" = uv ]; then
    if command -v uv >/dev/null; then
        uv=$(command -v uv)
    elif "$python" -m pip install --quiet --target "$work/uv" uv >"$work/uv-install.log" 2>&1; then
        uv="$work/uv/bin/uv"
    else
        echo "check-extras: uv could not be installed (pip install uv failed, below); using pip," \
            "which takes minutes longer:" >&2
        tail -n 10 "$work/uv-install.log" >&2
    fi
fi

# Resolve and fetch once, from the package index, what every extra needs (`.[all]` and the
# extras it does not hold). Each environment then installs from those files alone -- with
# uv: offline from its cache, held to the resolved versions; with pip: --no-index from the
# folder of wheels -- and each still resolves its own extra.
wanted=(".")
for extra in "${extras[@]}"; do [ "$extra" = core ] || wanted+=(".[$extra]"); done
resolve_with_uv() {
    "$uv" build --quiet --wheel --out-dir "$work/wheels" . || return
    wheel=$(ls "$work"/wheels/runbroker-*.whl) || return
    local specs=() spec
    for spec in "${wanted[@]}"; do specs+=("runbroker${spec#.} @ $wheel"); done
    "$uv" venv --quiet --python "$python" "$work/venv-resolve" || return
    "$uv" pip install --quiet --python "$work/venv-resolve/bin/python" "${specs[@]}" || return
    "$uv" pip freeze --python "$work/venv-resolve/bin/python" | grep -v '^runbroker ' \
        >"$work/resolved.txt" || return
    rm -rf "$work/venv-resolve"
}
resolve_with_pip() {
    "$python" -m pip wheel --quiet --wheel-dir "$work/wheels" "${wanted[@]}" || return
    wheel=$(ls "$work"/wheels/runbroker-*.whl) || return
}
if [ -n "$uv" ]; then resolver=resolve_with_uv; else resolver=resolve_with_pip; fi
if ! $resolver >"$work/resolve.log" 2>&1; then
    echo "check-extras: ${resolver#resolve_with_} could not resolve ${wanted[*]}:" >&2
    tail -n 30 "$work/resolve.log" >&2
    exit 1
fi
echo "check-extras: resolved and fetched with ${resolver#resolve_with_}" \
    "${uv:+$("$uv" --version | cut -d' ' -f2) }in $((SECONDS - start)) s"

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

# One environment: its output goes to its own log (printed by the caller when it ends), the
# step it is on to a file of its own, so that a failure says where it happened.
check_env() {
    local extra=$1 venv="$work/venv-$1" t0=$SECONDS spec
    step() { echo "$*" >"$work/step-$extra"; }
    step "creating the environment"
    if [ -n "$uv" ]; then
        spec="runbroker @ $wheel"
        [ "$extra" = core ] || spec="runbroker[$extra] @ $wheel"
        "$uv" venv --quiet --python "$python" "$venv"
        step "installing '$spec' (uv, offline)"
        "$uv" pip install --quiet --offline --python "$venv/bin/python" \
            --constraint "$work/resolved.txt" "$spec"
    else
        spec="$wheel"
        [ "$extra" = core ] || spec="$wheel[$extra]"
        "$python" -m venv "$venv"
        step "installing '$spec' (pip, --no-index)"
        "$venv/bin/pip" install --quiet --no-compile --no-index --find-links "$work/wheels" "$spec"
    fi
    step "opening, filling and reading an SQLite and a folder catalog"
    (cd "$work" && "$venv/bin/python" -W error::DeprecationWarning:runbroker -c "$smoke" "$extra")
    if [ "$extra" = postgres ] || [ "$extra" = all ]; then
        step "importing psycopg"
        "$venv/bin/python" -c "import psycopg"
    fi
    if [ "$extra" = server ] || [ "$extra" = all ]; then
        step "serving a catalog and reading it through the client"
        (cd "$work" && "$venv/bin/python" -c "$served")
    elif [ "$extra" = client ]; then
        step "importing the client"
        "$venv/bin/python" -c "import runbroker.client, runbroker.cli_cache"
    elif [ "$extra" = core ]; then
        step "opening a URL without the client extra"
        "$venv/bin/python" -c "$no_client"
    fi
    rm -rf "$venv"
    echo "check-extras: $extra in $((SECONDS - t0)) s"
}

# At most JOBS environments at once; each one's log is printed whole when it ends. The first
# failure shows its log, lets the running ones end and stops the run with a non-zero status.
declare -A job_extra=()
running=0
failed=()
collect_one() {
    local pid status=0 extra
    wait -n -p pid || status=$?
    extra=${job_extra[$pid]}
    running=$((running - 1))
    if [ "$status" -eq 0 ]; then
        cat "$work/log-$extra"
    else
        failed+=("$extra")
        local name="runbroker[$extra]"
        [ "$extra" != core ] || name=runbroker
        {
            echo "check-extras: $name FAILED (exit $status) while" \
                "$(cat "$work/step-$extra"); its output:"
            sed 's/^/    /' "$work/log-$extra"
        } >&2
    fi
}
for extra in "${extras[@]}"; do
    while [ "$running" -ge "$JOBS" ]; do collect_one; done
    [ ${#failed[@]} -eq 0 ] || break
    check_env "$extra" >"$work/log-$extra" 2>&1 &
    job_extra[$!]=$extra
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do collect_one; done
if [ ${#failed[@]} -gt 0 ]; then
    echo "check-extras: FAILED: ${failed[*]} (after $((SECONDS - start)) s)" >&2
    exit 1
fi
echo "check-extras: ${#extras[@]} environments in $((SECONDS - start)) s"
