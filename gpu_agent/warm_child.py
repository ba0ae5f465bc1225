"""A job's interpreter started ahead of its job: imports the host's preload modules, then becomes the job.

Run by a spare supervisor (warm.py) with the job's interpreter as `python warm_child.py MODULE...`, in its own
session: stdin a pipe from the supervisor, stdout and stderr the pipe that will be the job's output, descriptor 3
a pipe for its status lines. It imports MODULE... while the GPU is still busy with the previous job, writes
"ready" (or why an import failed) to descriptor 3, then reads the job, a JSON object {"executable": ...,
"argv": [python, "-m", module, ...] or [python, script.py, ...], "cwd": ..., "env": {...}}, from stdin until EOF,
writes "took", and runs it as `python -m` or `python script.py` would: same argv, sys.path[0], environment and
exit status.
An empty stdin (the supervisor went away) ends it quietly.

It runs in the job's interpreter, not the agent's, so it uses the standard library only. A preload module that
is not installed is skipped (that job does not use it). After any other import failure the job may already be on
its way, so the child still takes it and exec()s it: the ordinary start, in the same process. So it does too,
saying why in a "skip WHY" status line before "took", when a warm start would give the job other modules than an
ordinary start would:
- a preloaded module's file changed since it was imported (an upgrade): the job gets what is installed now;
- the job's first sys.path folder holds a module named like one imported here: on an ordinary start that file
  shadows it, because sys.path[0] comes first;
- the job's script cannot be opened: the interpreter says so itself.
"""
import sys

AT_START = set(sys.modules)     # what an ordinary start has imported before sys.path[0] exists
# Python puts the script's (or -m's working) folder first on sys.path, unless PYTHONSAFEPATH (3.11+) says not to
PATH0 = not getattr(sys.flags, "safe_path", False)
if PATH0:
    del sys.path[0]     # this file's folder (the agent's code) must not shadow the job's modules

import builtins  # noqa: E402
import importlib.machinery  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import types  # noqa: E402

STATUS_FD = 3
os.set_inheritable(STATUS_FD, False)    # nothing the preload imports start may hold it open


def stamps(modules):
    """The preloaded modules' files as they were imported: an upgrade (pip install) changes them."""
    found = {}
    for name in modules:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            st = os.stat(path)
            found[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def changed(found):
    """The first preloaded file changed since it was imported (said as a reason), or None."""
    for path, stamp in found.items():
        try:
            st = os.stat(path)
            same = (st.st_ino, st.st_size, st.st_mtime_ns) == stamp
        except OSError:
            same = False
        if not same:
            return "%s changed since it was imported" % path
    return None


def unopenable(job):
    """A script an ordinary start cannot open, which it reports in its own words (exit 2), or None."""
    argv = job["argv"]
    path = os.path.join(job["cwd"], argv[1])
    if argv[1] != "-m" and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        return "cannot open %s" % path
    return None


def imported_here():
    """Top-level modules imported since start-up, from files: the ones a job's file could shadow (built-in and
    frozen modules are found before sys.path is searched)."""
    names = {name.partition(".")[0] for name in set(sys.modules) - AT_START}
    return {name for name in names
            if getattr(getattr(sys.modules.get(name), "__spec__", None), "origin", None) not in ("built-in", "frozen")}


def first_on_path(job):
    """The folder an ordinary start puts first on sys.path: the working directory for -m, else the script's folder
    after resolving symlinks, as CPython does; None under PYTHONSAFEPATH."""
    if not PATH0:
        return None
    argv = job["argv"]
    if argv[1] == "-m":
        return os.path.realpath(job["cwd"])
    return os.path.dirname(os.path.realpath(os.path.join(job["cwd"], argv[1])))


def shadowing(job, names):
    """The first file in the job's sys.path[0] folder that an ordinary start would import instead of one of
    `names`, or None."""
    folder = first_on_path(job)
    try:
        entries = os.listdir(folder) if folder else []
    except OSError:
        return None
    suffixes = importlib.machinery.all_suffixes()
    for entry in sorted(entries):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):     # a regular package; a folder without __init__ loses to one further on
            found = entry if any(os.path.isfile(os.path.join(path, "__init__" + s)) for s in suffixes) else None
        else:
            found = next((entry[:-len(s)] for s in sorted(suffixes, key=len, reverse=True) if entry.endswith(s)),
                         None)
        if found in names:
            return "%s would shadow the module %s, imported ahead" % (path, found)
    return None


def preload(modules):
    """None when every module imported or is not installed at all, else why one failed."""
    for name in modules:
        try:
            __import__(name)
        except BaseException as e:  # noqa: BLE001 - a module's import may raise anything, SystemExit included
            absent = (isinstance(e, ModuleNotFoundError) and e.name is not None
                      and (name == e.name or name.startswith(e.name + ".")))
            if not absent:      # not "no such package": the module exists and its import broke
                return "importing %s failed: %s: %s" % (name, type(e).__name__, e)
    return None


def read_job():
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return json.loads(b"".join(chunks)) if chunks else None


def report_uncaught(kind, value, tb):
    """The default report without this file's frames, so a traceback reads as after a cold start (a module's
    keeps the two <frozen runpy> frames a cold `python -m` shows too)."""
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    sys.__excepthook__(kind, value.with_traceback(tb), tb)     # the default prints value's own traceback


def become(job):
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    sys.excepthook = report_uncaught
    # The job runs in a fresh __main__, as after a cold start: not in this file's globals, which runpy would use.
    main = sys.modules["__main__"] = types.ModuleType("__main__")
    # as the interpreter's own __main__ starts: without it exec() would put builtins' dict there, not the module
    main.__annotations__, main.__builtins__ = {}, builtins
    argv = job["argv"]
    sys.orig_argv = list(argv)      # the command line as the job was started, as a cold start's process has it
    folder = first_on_path(job)
    sys.path[:0] = [folder] if folder else []
    importlib.invalidate_caches()   # folders listed during the preload may have changed since (a pip install)
    if argv[1] == "-m":
        sys.argv = ["-m"] + argv[3:]        # runpy puts the module's path in argv[0], as -m does
        runpy._run_module_as_main(argv[2], alter_argv=True)
    else:       # as CPython runs a script: under its absolute path, argv as given
        path = os.path.abspath(argv[1])
        sys.argv = argv[1:]
        main.__file__, main.__cached__ = path, None
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
        with open(path, "rb") as f:
            source = f.read()
        exec(compile(source, path, "exec"), main.__dict__)


failure = preload(sys.argv[1:])
imported = stamps(sys.argv[1:])
with os.fdopen(STATUS_FD, "w") as status:      # closed before the job runs, so it does not inherit it
    status.write((failure or "ready").replace("\n", " ") + "\n")
    status.flush()
    job = read_job()
    skip = None if job is None or failure else changed(imported) or unopenable(job) or shadowing(job, imported_here())
    if skip:
        status.write("skip %s\n" % skip.replace("\n", " "))
    if job is not None:
        status.write("took\n")
if job is not None and (failure or skip):
    os.chdir(job["cwd"])
    os.execve(job["executable"], job["argv"], job["env"])
elif job is not None:
    become(job)
