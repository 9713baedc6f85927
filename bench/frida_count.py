"""Count the calls of one function in a started program with Frida (an Interceptor whose
onEnter adds one: Frida's per-hit cost with the least work), as a peer of `dprobe trace
--count`. The program's output is passed through; the count is printed last as `FRIDA n=N`.
    frida_count.py MODULE|- FUNCTION PROGRAM [ARGS...]   (- : the program's own symbol)
Environment variables named in FRIDA_ENV (NAME=VALUE, comma-separated) are given to the
program."""
import os
import sys
import threading

import frida

module, function, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
env = dict(kv.split("=", 1) for kv in os.environ.get("FRIDA_ENV", "").split(",") if kv)
device = frida.get_local_device()
pid = device.spawn(argv, env=env or None, stdio="pipe")
done = threading.Event()
count = []


def on_output(p, fd, data):
    if p == pid and data:
        (sys.stdout if fd == 1 else sys.stderr).write(data.decode())


def on_message(message, data):
    if message["type"] == "send":
        count.append(message["payload"])
        script.post({"type": "ack"})
    elif message["type"] == "error":
        sys.stderr.write(message.get("stack", str(message)) + "\n")


device.on("output", on_output)
session = device.attach(pid)
session.on("detached", lambda *args: done.set())
script = session.create_script(
    """
const target = %s === '-'
    ? (Process.mainModule.findSymbolByName(%s) ?? DebugSymbol.fromName(%s).address)
    : Process.getModuleByName(%s).getExportByName(%s);
let n = 0;
Interceptor.attach(target, { onEnter() { n++; } });
// At exit, hand the count over before the process goes.
Interceptor.attach(Process.getModuleByName('libc.so.6').getExportByName('exit'), {
    onEnter() { send(n); recv('ack', () => {}).wait(); }
});
"""
    % tuple(map(repr, [module, function, function, module, function]))
)
script.on("message", on_message)
script.load()
device.resume(pid)
done.wait()
print(f"FRIDA n={count[0] if count else 'none'}")
