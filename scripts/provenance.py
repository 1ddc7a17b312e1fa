"""Provenance of the results files the Python scripts write: the same record as the C++ writer
(include/saap/provenance/provenance.h), so that scripts/check_provenance.py reads both alike.

    prov = provenance.collect(inputs=[provenance.input_file("csv", path)])
    doc["provenance"] = prov              # JSON: a top-level "provenance" object
    f.write(provenance.csv_lines(prov))   # CSV: leading "# key: value" lines, before the header row
    f.write(provenance.md_line(prov))     # Markdown: a first-line HTML comment holding the JSON object
    provenance.stamp_png(png_path, prov)  # PNG: an iTXt chunk "provenance" holding the JSON object

A shell script's log (.log, .txt) starts with the CSV's comment lines, printed by
    python3 scripts/provenance.py lines --command "$0 $*" [--input ROLE=PATH ...] > "$OUT/tests.log"

The record: date (UTC, ISO 8601 to the second), machine {hostname, cpu, cores, gpus [{name,
driver}]}, commit and dirty (of the checkout the script runs from; dirty = uncommitted changes
outside results/), command (the exact command line), inputs [{role, path, sha256 | identity}].
Without git (the GPU machine gets the working tree without .git), SAAP_GIT_COMMIT and
SAAP_GIT_DIRTY (0|1) in the environment give the commit; with neither it is "unknown".
"""
import datetime
import glob
import hashlib
import json
import os
import re
import shlex
import socket
import struct
import subprocess
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_file(role, path):
    """An input file, identified by the sha256 of its bytes."""
    return {"role": role, "path": path, "sha256": sha256_file(path)}


def input_with_identity(role, path, identity):
    """An input that carries its own identity string (a model: its header hash)."""
    if not identity:
        raise ValueError(f"input {role} = {path!r} has an empty identity")
    return {"role": role, "path": path, "identity": identity}


def _git(*args):
    r = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def commit_and_dirty():
    # The caller's SAAP_GIT_COMMIT wins: the GPU machine's copy of the tree can hold a stale .git
    # (seen there: the session's first commit, "dirty"), so its git cannot be trusted.
    commit = os.environ.get("SAAP_GIT_COMMIT")
    if commit:
        dirty = os.environ.get("SAAP_GIT_DIRTY")
        return commit, {"0": False, "1": True}.get(dirty)
    try:
        head = _git("rev-parse", "HEAD")
    except OSError:  # no git at all
        head = None
    if head:
        status = _git("status", "--porcelain", "--", ".", ":(exclude)results")
        return head.strip(), None if status is None else bool(status.strip())
    return "unknown", None


def _read_field(path, key):
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith(key) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def gpus():
    """[{name, driver}] from the NVIDIA driver's /proc entries, else nvidia-smi, else []."""
    found = []
    version = _read_field("/proc/driver/nvidia/version", "NVRM version")
    # "Kernel Module  580.x" or, for the open module, "Kernel Module for x86_64  580.x": the first number.
    m = re.search(r"Kernel Module.*?\s(\d[\d.]*)", version)
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        found.append({"name": _read_field(info, "Model"), "driver": m.group(1) if m else ""})
    if found:
        return found
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if r.returncode != 0:
        return []
    for line in r.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if name:
            found.append({"name": name.strip(), "driver": driver.strip()})
    return found


def command_line():
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def collect(inputs=()):
    """The provenance of this process now, with `inputs` (from input_file / input_with_identity)."""
    commit, dirty = commit_and_dirty()
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {"hostname": socket.gethostname(), "cpu": _read_field("/proc/cpuinfo", "model name"),
                        "cores": os.cpu_count(), "gpus": gpus()},
            "commit": commit, "dirty": dirty, "command": command_line(), "inputs": list(inputs)}


def machine_line(prov):
    m = prov["machine"]
    line = f"{m['hostname']}, {m['cpu'] or 'unknown CPU'}, {m['cores']} cores"
    for i, g in enumerate(m.get("gpus", [])):
        line += ("; GPU " if i == 0 else ", ") + f"{g['name']} (driver {g['driver']})"
    return line


def _input_line(i):
    ident = f"sha256:{i['sha256']}" if "sha256" in i else f"identity:{i['identity']}"
    return f"{i['role']} {shlex.quote(i['path'])} {ident}"


def one_line(value):
    """A value on one comment line: line breaks written as \\n (the JSON record keeps them)."""
    return value.replace("\r", "\\r").replace("\n", "\\n")


def csv_lines(prov):
    """The leading '# key: value' lines of a CSV file (what the C++ writer writes)."""
    dirty = {True: " (dirty)", False: "", None: " (dirty: unknown)"}[prov["dirty"]]
    lines = [f"# date: {prov['date']}", f"# machine: {machine_line(prov)}", f"# commit: {prov['commit']}{dirty}",
             f"# command: {prov['command']}"]
    lines += [f"# input: {_input_line(i)}" for i in prov["inputs"]]
    return "".join(one_line(line) + "\n" for line in lines)


def md_line(prov):
    """A Markdown file's first line: an HTML comment (invisible when rendered) holding the record."""
    return "<!-- provenance " + json.dumps(prov) + " -->\n"


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def stamp_png(path, prov):
    """Adds an iTXt chunk 'provenance' (the JSON record, UTF-8) right after the PNG's IHDR chunk."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    ihdr_end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    text = b"provenance\x00\x00\x00\x00\x00" + json.dumps(prov).encode()  # keyword, no compression, no language
    with open(path, "wb") as f:
        f.write(data[:ihdr_end] + _png_chunk(b"iTXt", text) + data[ihdr_end:])


def _png_provenance(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    at = 8
    while at + 8 <= len(data):
        n = struct.unpack(">I", data[at:at + 4])[0]
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + n]
        at += 12 + n
        if kind == b"tEXt" and body.startswith(b"provenance\x00"):
            return json.loads(body.split(b"\x00", 1)[1].decode("latin-1"))
        if kind == b"iTXt" and body.startswith(b"provenance\x00"):
            _, rest = body.split(b"\x00", 1)
            compressed, rest = rest[0], rest[2:]
            _, _, rest = rest.split(b"\x00", 2)  # language tag, translated keyword
            return json.loads((zlib.decompress(rest) if compressed else rest).decode())
    return None


def _csv_provenance(path):
    fields = {}
    with open(path, errors="replace") as f:
        for line in f:
            if not line.startswith("#"):
                break
            key, sep, value = line[1:].partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    if not fields:
        return None
    commit = fields.get("commit", "").split(" ")[0] or None
    return {"date": fields.get("date"), "machine": fields.get("machine"), "commit": commit,
            "command": fields.get("command")}


def read(path):
    """The provenance a results file carries ({date, machine, commit, command, ...}), or None."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        with open(path) as f:
            doc = json.load(f)
        return doc.get("provenance") if isinstance(doc, dict) else None
    if ext in (".csv", ".log", ".txt"):
        return _csv_provenance(path)
    if ext == ".md":
        with open(path, errors="replace") as f:
            first = f.readline()
        m = re.match(r"<!-- provenance (.*) -->\s*$", first)
        return json.loads(m.group(1)) if m else None
    if ext == ".png":
        return _png_provenance(path)
    return None


def skip_comments(lines):
    """The lines of a CSV file after its leading '#' provenance lines (for csv.reader / DictReader)."""
    it = iter(lines)
    for line in it:
        if not line.startswith("#"):
            yield line
            break
    yield from it


def main():
    import argparse
    ap = argparse.ArgumentParser(description="Print the '# key: value' provenance lines a log file starts with.")
    ap.add_argument("what", choices=["lines", "json"])
    ap.add_argument("--command", help="the command the log records (default: this one)")
    ap.add_argument("--input", action="append", default=[], metavar="ROLE=PATH", help="an input file, by sha256")
    a = ap.parse_args()
    prov = collect(inputs=[input_file(*i.split("=", 1)) for i in a.input])
    if a.command:
        prov["command"] = a.command
    sys.stdout.write(csv_lines(prov) if a.what == "lines" else json.dumps(prov, indent=1) + "\n")


if __name__ == "__main__":
    main()
