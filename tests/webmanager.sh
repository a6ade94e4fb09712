#!/bin/sh
# Runs indiserv the way a web manager (indiwebmanager) runs indiserver:
# `indiserver -p PORT -m 1000 -v -f FIFO -u SOCK` found by name on PATH,
# drivers started and stopped by lines echoed into the FIFO, devices read
# back with indi_getprop.  Here `indiserver` is the indiserv command linked
# under that name, as docs/operations.rst tells users to install it.
#
# usage: webmanager.sh INDISERV_COMMAND PORT WORKDIR
# Exit status 0 when everything a web manager relies on held; otherwise
# 1, after saying what did not, with the server's output.
set -u
indiserv=$1
port=$2
work=$3

mkdir -p "$work/bin"
ln -sf "$indiserv" "$work/bin/indiserver"
PATH="$work/bin:$PATH"
export PATH
log="$work/indiserver.log"
fifo="$work/indiFIFO"
# The local socket's name (abstract on Linux) must fit in 108 bytes, which
# $work, deep in trial's directory, may not: a short directory of its own.
sockets=$(mktemp -d) || exit 1

fail() {
    echo "FAIL: $*"
    echo "--- indiserver output:"
    cat "$log"
    exit 1
}

# Polls, as a shell must, for a condition that comes with time.
eventually() {
    tries=300  # 30 s
    until "$@"; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}

logged() { grep -q "$1" "$log"; }

# indi_getprop's lines for the CONNECT element of device $1 (none: exit 1).
connect_of() {
    indi_getprop -h 127.0.0.1 -p "$port" -t "${2:-1}" "$1.CONNECTION.CONNECT"
}
absent() { ! connect_of "$1" >/dev/null; }

[ "$(command -v indiserver)" = "$work/bin/indiserver" ] || fail "indiserver on PATH is $(command -v indiserver)"

rm -f "$fifo"
mkfifo "$fifo"
indiserver -p "$port" -m 1000 -v -f "$fifo" -u "$sockets/sock" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server"; rm -rf "$sockets"' EXIT

# A line into the FIFO, as a web manager writes it; a writer would wait for
# ever on a server that has gone, so this one waits 10 s at most.
tell() {
    timeout 10 sh -c 'printf "%s\n" "$1" >"$2"' _ "$1" "$fifo" || fail "the server did not read: $1"
}

# A web manager writes at once, the write waiting until the server reads;
# here the server must be up first, or a failed start would hang the write.
reading() { logged "reading driver commands" || ! kill -0 "$server" 2>/dev/null; }
eventually reading && kill -0 "$server" 2>/dev/null || fail "the server did not start"

# Tools that find the server by process name (pgrep, psutil) see indiserver.
comm=$(cat "/proc/$server/comm" 2>/dev/null) || comm="(gone)"
[ "$comm" = indiserver ] || fail "the server's process name is $comm"

tell 'start indi_simulator_telescope -n "Telescope Simulator"'
tell "start indi_simulator_ccd"

for device in "Telescope Simulator" "CCD Simulator"; do
    indi_eval -h 127.0.0.1 -p "$port" -t 30 "\"$device.CONNECTION.CONNECT\"==0" >/dev/null ||
        fail "$device never defined CONNECTION"
done
lines=$(indi_getprop -h 127.0.0.1 -p "$port" -t 2 \
    "Telescope Simulator.CONNECTION.CONNECT" "CCD Simulator.CONNECTION.CONNECT" | sort -u)
expected="CCD Simulator.CONNECTION.CONNECT=Off
Telescope Simulator.CONNECTION.CONNECT=Off"
[ "$lines" = "$expected" ] || fail "indi_getprop printed: $lines"

tell "stop indi_simulator_ccd"
eventually logged "indi_simulator_ccd stopped" || fail "indi_simulator_ccd was not stopped"
# Each absent check waits out indi_getprop's full second: together they
# outlast the first restart delay (1 s), so a restarted CCD would show.
absent "CCD Simulator" || fail "the CCD is still served after stop"
[ "$(connect_of "Telescope Simulator" 2)" = "Telescope Simulator.CONNECTION.CONNECT=Off" ] ||
    fail "the telescope went with the CCD"
absent "CCD Simulator" || fail "the CCD came back"
if logged "indi_simulator_ccd.*restart"; then fail "the CCD was restarted"; fi
echo "OK"
