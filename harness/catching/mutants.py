"""Mutants of a kernel patch: the lines a patch adds, broken one at a time
the way real bugs break them.  Pure text handling, no I/O.

    patch = Patch.parse(text)
    for m in mutants(patch):
        m.id, m.operator, m.describe(), m.render()    # render(): the mutated patch

Operators (on added C lines only; comments, docs, declarations, labels and
initializer lists are left alone):

- ``delete``      an added statement becomes ``;``
- ``negate``      an if/while condition, or a boolean assignment, is negated
- ``drop_jump``   an early return/continue/goto/break becomes ``;``
- ``flag_zero``   a flag update (``|= X``, ``&= ~X``) becomes ``= 0``
- ``swap_incdec`` ``++`` becomes ``--`` and back
- ``no_wait``     an added wait loop ``while (C)`` never runs (``if (0)``)
- ``const``       an integer literal becomes 0 or 1, true/false swap

A mutant is named ``<file>:<line>:<operator>`` (the line in the patched
file), a name that stays put while the patch does.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
_CODE_SUFFIXES = (".c", ".h")
_DECL_START = re.compile(
    r"^(static|extern|const|volatile|unsigned|signed|int|long|short|char|bool|void|size_t|ssize_t|"
    r"u8|u16|u32|u64|s8|s16|s32|s64|__u\d+|__be\d+|__le\d+|struct|union|enum|typedef|"
    r"DEFINE_\w+|DECLARE_\w+|LIST_HEAD)\b")
_CONTROL = re.compile(r"^(if|while|for|switch)\s*\(")
_JUMP = re.compile(r"^(return\b.*|continue|break|goto\s+\w+)\s*;$", re.S)
_FLAG_UPDATE = re.compile(r"^(?P<lhs>[\w.\->\[\]]+)\s*(\|=|&=\s*~)\s*(?P<rhs>.+);$", re.S)
_INCDEC = re.compile(r"(\+\+|--)")
_ASSIGN = re.compile(r"^(?P<lhs>[\w.\->\[\]*]+)\s*=(?!=)\s*(?P<rhs>.+);$", re.S)
_BOOLEAN_RHS = re.compile(r"&&|\|\||==|!=|<=|>=|(?<![-\w])!(?!=)|\btest_bit\b|\bskb_queue_empty\w*\b|\bIS_ERR\b")
_INT_LITERAL = re.compile(r"(?<![\w.])(0[xX][0-9a-fA-F]+|\d+)[uUlL]*(?![\w.])")
_SWAPS = {"true": "false", "false": "true", "SYSCTL_ZERO": "SYSCTL_ONE", "SYSCTL_ONE": "SYSCTL_ZERO"}


class PatchError(ValueError):
    pass


# --- the patch ------------------------------------------------------------------

@dataclasses.dataclass
class Hunk:
    header: str                 # the "@@ ... @@" line
    old_start: int
    new_start: int
    lines: list[str]            # " x", "+x", "-x", "\\ No newline..."

    def new_side(self) -> list[tuple[int, int, str, bool]]:
        """(index in self.lines, new-file line number, text, added) for each
        line of the patched file this hunk shows."""
        out, number = [], self.new_start
        for i, line in enumerate(self.lines):
            if line.startswith(("+", " ")) or line == "":
                out.append((i, number, line[1:], line.startswith("+")))
                number += 1
        return out

    def render(self) -> list[str]:
        old = sum(1 for l in self.lines if l.startswith(("-", " ")) or l == "")
        new = sum(1 for l in self.lines if l.startswith(("+", " ")) or l == "")
        m = _HUNK.match(self.header)
        tail = m.group(5) if m else ""
        return [f"@@ -{self.old_start},{old} +{self.new_start},{new} @@{tail}", *self.lines]


@dataclasses.dataclass
class FilePatch:
    head: list[str]             # "diff ...", "--- a/x", "+++ b/x"
    path: str                   # the patched file, relative to the tree
    hunks: list[Hunk]

    @property
    def is_code(self) -> bool:
        return self.path.endswith(_CODE_SUFFIXES) and not self.path.startswith("Documentation/")


@dataclasses.dataclass
class Patch:
    preamble: list[str]
    files: list[FilePatch]

    @classmethod
    def parse(cls, text: str) -> Patch:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        preamble: list[str] = []
        files: list[FilePatch] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
                head = [line, lines[i + 1]]
                if files or preamble:
                    # a "diff ..." / "index ..." line just before belongs to this file
                    owner = files[-1].hunks[-1].lines if files and files[-1].hunks else preamble
                    while owner and owner[-1].startswith(("diff ", "index ", "new file", "deleted file")):
                        head.insert(0, owner.pop())
                path = _strip_prefix(lines[i + 1][4:].split("\t")[0])
                files.append(FilePatch(head, path, []))
                i += 2
                continue
            m = _HUNK.match(line)
            if m and files:
                files[-1].hunks.append(Hunk(line, int(m.group(1)), int(m.group(3)), []))
                old_left = int(m.group(2) if m.group(2) is not None else 1)
                new_left = int(m.group(4) if m.group(4) is not None else 1)
                i += 1
                while i < len(lines) and (old_left > 0 or new_left > 0 or lines[i].startswith("\\")):
                    body = lines[i]
                    if body.startswith("\\"):
                        pass
                    elif body.startswith("-"):
                        old_left -= 1
                    elif body.startswith("+"):
                        new_left -= 1
                    elif body.startswith(" ") or body == "":
                        old_left -= 1
                        new_left -= 1
                    else:
                        raise PatchError(f"line {i + 1}: unexpected line in a hunk: {body!r}")
                    files[-1].hunks[-1].lines.append(body)
                    i += 1
                if old_left or new_left:
                    raise PatchError(f"{files[-1].path}: hunk {line!r} ends early")
                continue
            if files and files[-1].hunks:
                files[-1].hunks[-1].lines.append(line)  # trailing text (signature, next diff line)
            else:
                preamble.append(line)
            i += 1
        if not files:
            raise PatchError("no file changes found (expected a unified diff)")
        return cls(preamble, files)

    def render(self) -> str:
        out = list(self.preamble)
        for f in self.files:
            out += f.head
            for h in f.hunks:
                out += h.render()
        return "\n".join(out) + "\n"


def _strip_prefix(path: str) -> str:
    return path.split("/", 1)[1] if "/" in path else path


# --- statements in the added lines -------------------------------------------------

@dataclasses.dataclass
class Statement:
    """A statement (or a control header: ``if (c)``, ``while (c)``) of the
    patched file lying wholly on added lines; ``start``/``end`` are (index
    in hunk.lines, column in the line without its "+") of its first and
    last character."""
    file: FilePatch
    hunk: Hunk
    start: tuple[int, int]
    end: tuple[int, int]
    line_no: int                # new-file line number of its first line
    text: str                   # code with comments blanked, as one string
    header: str | None = None   # "if", "while", "for" for a control header
    in_if: bool = False         # the body of an if (braceless or a block)
    in_loop: bool = False       # directly inside a loop

    def source(self) -> str:
        """The statement's own text in the patch (comments kept)."""
        lines = [l[1:] for l in self.hunk.lines[self.start[0]:self.end[0] + 1]]
        lines[-1] = lines[-1][:self.end[1] + 1]
        lines[0] = lines[0][self.start[1]:]
        return "\n".join(lines)


def _blank_comments(line: str, in_comment: bool) -> tuple[str, bool]:
    """Comments replaced by spaces (columns stay put); string contents kept."""
    out = list(line)
    i, in_string = 0, False
    while i < len(line):
        if in_comment:
            end = line.find("*/", i)
            stop = len(line) if end < 0 else end + 2
            out[i:stop] = " " * (stop - i)
            if end < 0:
                return "".join(out), True
            i, in_comment = stop, False
        elif in_string:
            if line[i] == "\\":
                i += 2
                continue
            if line[i] == '"':
                in_string = False
            i += 1
        elif line[i] == '"':
            in_string = True
            i += 1
        elif line.startswith("/*", i):
            in_comment = True
        elif line.startswith("//", i):
            out[i:] = " " * (len(line) - i)
            break
        else:
            i += 1
    return "".join(out), in_comment


_HEADER = re.compile(r"^(?:else\s+)?(if|while|for|switch)\s*\("
                     r"|^(\w*for_each\w*|list_for_each\w*|skb_queue_walk\w*)\s*\(")


def statements(fp: FilePatch) -> list[Statement]:
    """Statements and control headers of the hunks' new side that lie wholly
    on added lines.  The text is cut at ``;``, ``{`` and ``}`` outside
    parentheses, and after a control header's closing parenthesis; a
    stack of open braces tells an if's body (for "early" jumps) apart."""
    found: list[Statement] = []
    for hunk in fp.hunks:
        in_comment = False
        chars: list[tuple[int, int, int, bool, str]] = []  # (index, col, line_no, added, ch) of the piece
        stack: list[str] = []        # what each open brace belongs to: "if", "loop", "block"
        pending: str | None = None   # a braceless header's body comes next
        depth = 0

        def piece_text() -> str:
            return "".join(c[4] for c in chars)

        def emit(header: str | None = None) -> Statement | None:
            nonlocal chars
            text = piece_text()
            keep = [c for c in chars if not c[4].isspace()]
            chars = []
            if not keep:
                return None
            body_of = pending if header is None else None
            st = Statement(fp, hunk, (keep[0][0], keep[0][1]), (keep[-1][0], keep[-1][1]), keep[0][2],
                           text.strip(), header,
                           in_if=(body_of == "if") or (body_of is None and bool(stack) and stack[-1] == "if"),
                           in_loop=(body_of == "loop") or (body_of is None and bool(stack) and stack[-1] == "loop"))
            if all(c[3] for c in keep):
                found.append(st)
            return st

        for index, line_no, text, added in hunk.new_side():
            code, in_comment = _blank_comments(text, in_comment)
            if code.lstrip().startswith("#"):
                continue
            for col, ch in enumerate(code):
                chars.append((index, col, line_no, added, ch))
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth = max(0, depth - 1)
                    if depth == 0:
                        m = _HEADER.match(piece_text().strip().lstrip("}").strip())
                        if m:
                            kind = m.group(1) or "for"
                            emit(header=kind)
                            pending = "if" if kind == "if" else "loop" if kind != "switch" else None
                elif depth == 0 and ch in ";{}":
                    text_now = piece_text().strip()
                    if ch == "}":
                        chars = []
                        if stack:
                            stack.pop()
                        continue
                    if ch == "{":
                        chars = []
                        word = text_now[:-1].strip()
                        stack.append(pending or ("if" if word.endswith("else") else "block"))
                        pending = None
                        continue
                    if text_now.startswith("else") and not text_now.startswith("else if"):
                        # "else stmt;": the statement is what follows the keyword
                        while chars and not "".join(c[4] for c in chars[:4]).startswith("else"):
                            chars.pop(0)
                        chars = chars[4:]
                        pending = "if"
                    emit()
                    pending = None
    return found


def _is_declaration(text: str) -> bool:
    t = text.strip()
    if _DECL_START.match(t) and not _CONTROL.match(t):
        return True
    # "type *name;" / "type name, other;" with a typedef'd type
    return bool(re.match(r"^[A-Za-z_]\w*(\s+|\s*\*\s*)\*?[A-Za-z_]\w*(\s*\[[^]]*\])?(\s*,\s*\*?\w+)*\s*;$", t)
                and not t.startswith(("return", "goto")))


# --- mutants --------------------------------------------------------------------

@dataclasses.dataclass
class Mutant:
    id: str
    operator: str
    file: str
    line_no: int
    statement: Statement
    replacement: str            # what the statement's span becomes

    @property
    def original(self) -> list[str]:
        return [l[1:] for l in self.statement.hunk.lines[self.statement.start[0]:self.statement.end[0] + 1]]

    @property
    def mutated(self) -> list[str]:
        first, last = self.original[0], self.original[-1]
        head = first[:self.statement.start[1]]
        tail = last[self.statement.end[1] + 1:]
        return (head + self.replacement + tail).split("\n")

    def describe(self) -> str:
        return f"{' '.join(self.statement.source().split())}  ->  {' '.join(self.replacement.split())}"

    def render(self, patch: Patch) -> str:
        """The whole patch with this mutation in it."""
        hunk, (a, _), (b, _) = self.statement.hunk, self.statement.start, self.statement.end
        original = hunk.lines
        hunk.lines = original[:a] + ["+" + l for l in self.mutated] + original[b + 1:]
        try:
            return patch.render()
        finally:
            hunk.lines = original

    def diff(self) -> str:
        """The statement in the patched file, then its mutant."""
        return "\n".join([f"--- {self.file}:{self.line_no} (patch)", f"+++ {self.file}:{self.line_no} (mutant)",
                          *("-" + l for l in self.original), *("+" + l for l in self.mutated)])


def mutants(patch: Patch) -> list[Mutant]:
    out: list[Mutant] = []
    for fp in patch.files:
        if not fp.is_code:
            continue
        for st in statements(fp):
            name = fp.path.rsplit("/", 1)[-1]
            for operator, replacement in _mutations(st):
                out.append(Mutant(f"{name}:{st.line_no}:{operator}", operator, fp.path, st.line_no, st,
                                  replacement))
    seen: dict[str, int] = {}
    for m in out:  # unique names when one statement yields several of a kind
        n = seen[m.id] = seen.get(m.id, 0) + 1
        if n > 1:
            m.id = f"{m.id}:{n}"
    return out


def _mutations(st: Statement):
    """(operator, replacement text of the statement's span) pairs."""
    text, src = st.text, st.source()
    if st.header:
        if st.header in ("if", "while"):
            yield "negate", _wrap_condition(src, st.header)
        if st.header == "while":
            yield "no_wait", _replace_condition(src, "while", "if (0)")
        return
    if not text.endswith(";") or text.startswith((".", "{")) or _is_declaration(text):
        return
    jump = _JUMP.match(text)
    if jump:
        if st.in_if:  # an early exit; the last return of a function is not dropped
            yield "drop_jump", ";  /* mutant: dropped */"
        if text.startswith("return"):
            yield from _const(src)
        return
    yield "delete", ";  /* mutant: deleted */"
    flag = _FLAG_UPDATE.match(text)
    if flag:
        yield "flag_zero", f"{flag.group('lhs')} = 0;"
    if re.fullmatch(r"[\w.\->\[\]]+\s*(\+\+|--)\s*;|(\+\+|--)\s*[\w.\->\[\]]+\s*;", text):
        yield "swap_incdec", _INCDEC.sub(lambda m: "--" if m.group(1) == "++" else "++", src)
    assign = _ASSIGN.match(text)
    if assign and _BOOLEAN_RHS.search(assign.group("rhs")):
        yield "negate", _negate_rhs(src)
    yield from _const(src)


def _const(src: str):
    """Each integer literal (outside strings and comments) to 0 or 1;
    true/false and SYSCTL_ZERO/ONE swapped."""
    code = "\n".join(_blank_comments(l, False)[0] for l in src.split("\n"))
    spans = []
    for m in _INT_LITERAL.finditer(code):
        if not _inside_string(code, m.start()):
            spans.append((m.start(), m.end(), "1" if int(m.group(1), 0) == 0 else "0"))
    for word, swap in _SWAPS.items():
        for m in re.finditer(rf"\b{word}\b", code):
            if not _inside_string(code, m.start()):
                spans.append((m.start(), m.end(), swap))
    for start, end, new in sorted(spans):
        yield "const", src[:start] + new + src[end:]


def _inside_string(text: str, pos: int) -> bool:
    line_start = text.rfind("\n", 0, pos) + 1
    return text[line_start:pos].count('"') % 2 == 1


def _matching_paren(text: str, open_pos: int) -> int:
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise PatchError(f"unbalanced parentheses in {text!r}")


def _wrap_condition(src: str, keyword: str) -> str:
    open_pos = src.index("(", src.index(keyword))
    close = _matching_paren(src, open_pos)
    return src[:open_pos + 1] + "!(" + src[open_pos + 1:close] + ")" + src[close:]


def _replace_condition(src: str, keyword: str, replacement: str) -> str:
    start = src.index(keyword)
    close = _matching_paren(src, src.index("(", start))
    return src[:start] + replacement + src[close + 1:]


def _negate_rhs(src: str) -> str:
    eq = re.search(r"(?<![=!<>|&+\-*/])=(?!=)", src)
    assert eq is not None, src
    semi = src.rindex(";")
    rhs = eq.end()
    while src[rhs] in " \t":
        rhs += 1
    return src[:rhs] + "!(" + src[rhs:semi].rstrip() + ")" + src[semi:]


# --- equivalent mutants, listed beside the patch ----------------------------------

def parse_equivalent(text: str) -> dict[str, str]:
    """``<mutant id>: <why it changes no behaviour>`` per line; # comments."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+?:\d+:\w+(?::\d+)?):\s+(\S.*)$", line)
        if not m:
            raise PatchError(f"line {number}: expected '<file>:<line>:<operator>: <reason>', got {line!r}")
        out[m.group(1)] = m.group(2)
    return out


# --- merged code: a function's or a line range's statements as a patch's added lines --------------

_TARGET = re.compile(r"^(?P<file>[\w./+-]+\.[ch]):(?:(?P<a>\d+)-(?P<b>\d+)|(?P<function>\w+))$")


def find_function(text: str, name: str, path: str = "") -> tuple[int, int]:
    """The 1-based first and last lines of C function ``name``'s definition
    in ``text`` (kernel style: its body's braces at column 0; the first line
    is the one that names it, a return type on the line above is left out)."""
    lines = text.split("\n")
    named = re.compile(rf"^(?:[A-Za-z_][\w\s*]*[\s*])?{re.escape(name)}\s*\(")
    for i, line in enumerate(lines):
        if not named.match(line):
            continue
        j = i
        while j < len(lines) and lines[j] != "{":
            if lines[j].rstrip().endswith(";") or (j > i and lines[j][:1] not in ("", " ", "\t")):
                break  # a prototype, or the next top-level thing: not a definition
            j += 1
        if j == len(lines) or lines[j] != "{":
            continue
        for k in range(j + 1, len(lines)):
            if lines[k].startswith("}"):
                return i + 1, k + 1
    raise PatchError(f"{path or 'the file'}: no definition of function {name} (kernel style: "
                     f"'{name}(...)' at the start of a line, its body between braces at column 0)")


def lines_patch(path: str, text: str, ranges: list[tuple[int, int]], context: int = 3) -> str:
    """A no-op unified diff of ``path`` that removes lines A-B of each range
    and adds them back unchanged: their statements are then a patch's added
    lines, so every operator mutates merged code, and applied unmutated it
    changes nothing.  Ranges are 1-based and inclusive; overlapping or
    adjacent ones (within the context) become one hunk."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if not 1 <= a <= b <= len(lines):
            raise PatchError(f"{path}:{a}-{b}: outside the file's {len(lines)} lines")
        if merged and a <= merged[-1][1] + 2 * context + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out = [f"--- a/{path}", f"+++ b/{path}"]
    for a, b in merged:
        before = lines[max(0, a - 1 - context):a - 1]
        after = lines[b:b + context]
        body = lines[a - 1:b]
        start = a - len(before)
        count = len(before) + len(body) + len(after)
        out.append(f"@@ -{start},{count} +{start},{count} @@")
        out += [" " + l for l in before] + ["-" + l for l in body] + ["+" + l for l in body]
        out += [" " + l for l in after]
    return "\n".join(out) + "\n"


def parse_targets(text: str, source: str) -> list[str]:
    """A targets file: one ``FILE:FUNCTION`` or ``FILE:A-B`` a line; ``#``
    starts a comment."""
    targets = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not _TARGET.match(line):
            raise PatchError(f"{source}:{n}: {line!r}: expected FILE:FUNCTION or FILE:A-B (a .c or .h file)")
        targets.append(line)
    return targets


def targets_patch(targets: list[str], read: Callable[[str], bytes]) -> str:
    """One no-op patch over every target (``FILE:FUNCTION`` or ``FILE:A-B``),
    the files read with ``read`` (a Source's pristine tree)."""
    texts: dict[str, str] = {}
    ranges: dict[str, list[tuple[int, int]]] = {}
    for target in targets:
        m = _TARGET.match(target)
        if m is None:
            raise PatchError(f"{target!r}: expected FILE:FUNCTION or FILE:A-B (a .c or .h file)")
        path = m.group("file")
        if path not in texts:
            try:
                texts[path] = read(path).decode(errors="replace")
            except (OSError, KeyError) as e:
                raise PatchError(f"{target}: cannot read {path} from the source ({e})") from None
        span = ((int(m.group("a")), int(m.group("b"))) if m.group("function") is None
                else find_function(texts[path], m.group("function"), path))
        ranges.setdefault(path, []).append(span)
    return "".join(lines_patch(path, texts[path], spans) for path, spans in ranges.items())
