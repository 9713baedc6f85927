#!/usr/bin/env python3
"""Frida's Interceptor with a native callback on the frida_peer bench's target function.

usage: frida_peer.py BENCH_EXECUTABLE

Starts the bench executable in its Frida-target role (it prints the address of the function
to hook, then waits), attaches Frida to it, hooks the function with a CModule (C compiled
by Frida's TinyCC) whose onEnter adds one to a counter, tells the target to measure, and
prints the target's measurement with the counter:

    FRIDA hooked=<ns per call> plain=<ns per call> calls=<calls> hits=<counter>

Needs the `frida` Python package (`pip install frida`).
"""
import os
import subprocess
import sys

import frida

CMODULE = r"""
#include <gum/guminterceptor.h>
extern volatile unsigned long long hits;
void onEnter(GumInvocationContext *ic) { hits++; }
"""

SCRIPT = """
const hits = Memory.alloc(8);
const cm = new CModule(%s, { hits });
Interceptor.attach(ptr('%s'), cm);
rpc.exports = { hits() { return hits.readU64().toNumber(); } };
"""


def main():
    exe = sys.argv[1]
    env = dict(os.environ, DPROBE_PEER_ROLE="frida-target")
    target = subprocess.Popen([exe], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = target.stdout.readline().split()
    if len(ready) != 2 or ready[0] != "ready":
        sys.exit("the target did not start: %r" % ready)
    session = frida.attach(target.pid)
    script = session.create_script(SCRIPT % (repr(CMODULE), ready[1]))
    script.load()
    target.stdin.write("go\n")
    target.stdin.flush()
    measured = target.stdout.readline().strip()
    hits = script.exports_sync.hits()
    script.unload()
    session.detach()
    target.stdin.write("done\n")
    target.stdin.flush()
    target.wait()
    print("FRIDA %s hits=%d" % (measured, hits), flush=True)


if __name__ == "__main__":
    main()
