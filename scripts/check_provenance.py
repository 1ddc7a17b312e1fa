#!/usr/bin/env python3
"""Checks that every file under results/ carries its provenance (date, machine, commit, command),
or is listed, with a reason, under the README's "Results without provenance" heading.

    scripts/check_provenance.py [--root REPO] [--readme README.md] [DIR ...]   (default DIR: results)
    scripts/check_provenance.py --self-test

Where the record lives (scripts/provenance.py reads it; the C++ and Python writers write it):
JSON a top-level "provenance" object; CSV, .log and .txt leading "# key: value" lines; Markdown a first-line
"<!-- provenance {json} -->" comment; PNG an iTXt chunk "provenance". Any other file type fails
unless it is an exception.

An exception is a list item under that heading: one or more `path` or `glob` patterns in backticks
(relative to the repository root), then a reason. A pattern that matches no file, or a listed file
that carries its provenance after all (regenerated), fails the check, so the list cannot go stale.
Exit status: 0 all files pass, 1 a file lacks provenance or an exception is malformed or stale.
"""
import argparse
import csv
import fnmatch
import json
import os
import re
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

EXCEPTIONS_HEADING = "Results without provenance"
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?Z$")
COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


def problems_of(prov):
    """What is missing or malformed in a provenance record (empty list: it passes)."""
    if not isinstance(prov, dict):
        return ["no provenance record"]
    out = []
    if not DATE.match(str(prov.get("date") or "")):
        out.append(f"date {prov.get('date')!r} is not a UTC ISO 8601 date")
    machine = prov.get("machine")
    if not machine or (isinstance(machine, dict) and not (machine.get("cpu") or machine.get("hostname"))):
        out.append("no machine")
    if not COMMIT.match(str(prov.get("commit") or "")):
        out.append(f"commit {prov.get('commit')!r} is not a git commit")
    if not str(prov.get("command") or "").strip():
        out.append("no command")
    return out


def read_exceptions(readme):
    """[(patterns, reason, line number)] from the list under the exceptions heading."""
    items, inside, level = [], False, 0
    with open(readme) as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        heading = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if heading:
            if inside and len(heading.group(1)) <= level:
                break
            if heading.group(2) == EXCEPTIONS_HEADING:
                inside, level = True, len(heading.group(1))
            continue
        if not inside:
            continue
        if line.startswith("- "):
            items.append([line[2:].strip(), n])
        elif items and line.startswith("  ") and line.strip():
            items[-1][0] += " " + line.strip()  # a continued item
    out = []
    for text, n in items:
        m = re.match(r"^((?:`[^`]+`(?:,\s*|\s+and\s+|\s+)?)+)[:\s—–-]*(.*)$", text)
        patterns = re.findall(r"`([^`]+)`", m.group(1)) if m else []
        out.append((patterns, (m.group(2) if m else "").strip(), n))
    return out, inside


def check(root, readme, dirs):
    errors, exceptions_used = [], 0
    exceptions, found_heading = read_exceptions(readme) if os.path.exists(readme) else ([], False)
    if not found_heading:
        errors.append(f"{readme}: no '{EXCEPTIONS_HEADING}' heading (add it, with an empty list if none)")
    patterns = []
    for pats, reason, n in exceptions:
        if not pats:
            errors.append(f"{readme}:{n}: an exception names no `path` in backticks")
        if len(reason) < 10:
            errors.append(f"{readme}:{n}: exception {pats} gives no reason")
        patterns += [(p, n) for p in pats]
    files = []
    for d in dirs:
        for base, _, names in os.walk(os.path.join(root, d)):
            files += [os.path.relpath(os.path.join(base, x), root) for x in names]
    files.sort()
    matched = set()
    ok = 0
    for path in files:
        hit = [p for p, _ in patterns if fnmatch.fnmatchcase(path, p)]
        matched.update(hit)
        try:
            bad = problems_of(provenance.read(os.path.join(root, path)))
        except (ValueError, OSError, UnicodeDecodeError) as e:
            bad = [f"unreadable: {e}"]
        if hit and not bad:
            errors.append(f"{path}: carries its provenance, but is listed as an exception ({', '.join(hit)})")
        elif hit:
            exceptions_used += 1
        elif bad:
            errors.append(f"{path}: " + "; ".join(bad))
        else:
            ok += 1
    for p, n in patterns:
        if p not in matched:
            errors.append(f"{readme}:{n}: exception `{p}` matches no file (remove it)")
    return errors, ok, exceptions_used


def self_test():
    """The writer and the check agree: good files pass, each missing field fails, exceptions parse."""
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        res = os.path.join(tmp, "results")
        os.makedirs(os.path.join(res, "runs"))
        src = os.path.join(tmp, "input.txt")
        with open(src, "w") as f:
            f.write("abc")
        prov = provenance.collect(inputs=[provenance.input_file("text", src)])
        expect(prov["inputs"][0]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
               "sha256 of 'abc' differs from the FIPS 180-2 test vector")
        if prov["commit"] == "unknown":  # run outside a git checkout: the rest of the test still applies
            prov["commit"] = "0" * 40
        prov["command"] += " --note 'two\nlines'"  # an argument with a line break must not break the CSV
        with open(os.path.join(res, "a.json"), "w") as f:
            json.dump({"x": 1, "provenance": prov}, f)
        with open(os.path.join(res, "a.csv"), "w") as f:
            f.write(provenance.csv_lines(prov) + "x,y\n1,2\n")
        with open(os.path.join(res, "runs", "tests.log"), "w") as f:
            f.write(provenance.csv_lines(prov) + "100% tests passed\n")
        with open(os.path.join(res, "runs", "a.md"), "w") as f:
            f.write(provenance.md_line(prov) + "| a |\n")
        # The smallest valid PNG: a 1x1 grey image.
        png = (b"\x89PNG\r\n\x1a\n" + provenance._png_chunk(b"IHDR", b"\0\0\0\1\0\0\0\1\x08\0\0\0\0")
               + provenance._png_chunk(b"IDAT", zlib.compress(b"\0\x80"))
               + provenance._png_chunk(b"IEND", b""))
        with open(os.path.join(res, "a.png"), "wb") as f:
            f.write(png)
        provenance.stamp_png(os.path.join(res, "a.png"), prov)
        readme = os.path.join(tmp, "README.md")
        with open(readme, "w") as f:
            f.write(f"# x\n### {EXCEPTIONS_HEADING}\n\n### next\n")
        errors, ok, _ = check(tmp, readme, ["results"])
        expect(not errors and ok == 5, f"good files rejected: {errors}")
        with open(os.path.join(res, "a.csv")) as f:
            rows = list(csv.reader(provenance.skip_comments(f)))
        expect(rows == [["x", "y"], ["1", "2"]], f"skip_comments left {rows}")
        for field in ("date", "machine", "commit", "command"):
            broken = dict(prov)
            broken[field] = "" if field != "commit" else "unknown"
            with open(os.path.join(res, "a.json"), "w") as f:
                json.dump({"provenance": broken}, f)
            errors, _, _ = check(tmp, readme, ["results"])
            expect(any(e.startswith(os.path.join("results", "a.json")) for e in errors), f"missing {field} passed")
            with open(os.path.join(res, "a.csv"), "w") as f:
                f.write("".join(l for l in provenance.csv_lines(prov).splitlines(True)
                                if not l.startswith(f"# {field}:")) + "x\n")
            errors, _, _ = check(tmp, readme, ["results"])
            expect(any(e.startswith(os.path.join("results", "a.csv")) for e in errors), f"CSV without {field} passed")
        with open(os.path.join(res, "bare.txt"), "w") as f:
            f.write("no provenance")
        errors, _, _ = check(tmp, readme, ["results"])
        expect(any("bare.txt" in e for e in errors), "a file type without provenance passed")
        with open(readme, "w") as f:
            f.write(f"# x\n### {EXCEPTIONS_HEADING}\n- `results/bare.txt`, `results/a.*`: written by hand before\n"
                    "  provenance existed.\n- `results/gone.json`: a stale entry\n- `results/b.json`\n### next\n"
                    "- `results/x.json`: outside the section\n")
        excs, _ = read_exceptions(readme)
        expect([e[:2] for e in excs] == [(["results/bare.txt", "results/a.*"],
                                          "written by hand before provenance existed."),
                                         (["results/gone.json"], "a stale entry"), (["results/b.json"], "")],
               f"exceptions parsed as {excs}")
        errors, _, used = check(tmp, readme, ["results"])
        # a.json and a.csv are broken by the loop above; a.png still carries provenance.
        expect(used == 3, f"{used} files matched the exceptions, expected 3 (bare.txt, a.json, a.csv)")
        expect(any("results/a.png" in e and "listed as an exception" in e for e in errors),
               "a listed file that carries provenance passed")
        expect(any("results/gone.json" in e and "matches no file" in e for e in errors), "stale exception passed")
        expect(any("gives no reason" in e for e in errors), "exception without a reason passed")
        expect(not any("bare.txt" in e for e in errors), "a listed exception still failed")
    for f in failures:
        print("self-test FAILED:", f)
    print("self-test", "failed" if failures else "passed")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", default=["results"])
    ap.add_argument("--root", default=provenance.ROOT)
    ap.add_argument("--readme", help="default: ROOT/README.md")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        return self_test()
    errors, ok, excepted = check(a.root, a.readme or os.path.join(a.root, "README.md"), a.dirs)
    for e in errors:
        print("FAIL", e)
    print(f"{ok} files carry provenance, {excepted} are listed exceptions, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
