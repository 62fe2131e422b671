"""Mutants of a kernel patch: the lines a patch adds, broken one at a time
the way real bugs break them.  Pure text handling, no I/O.

    patch = Patch.parse(text)
    for m in mutants(patch, constants):
        m.id, m.operator, m.describe(), m.render()    # render(): the mutated patch

Operators (on added C lines only; comments, docs, declarations, labels and
initializer lists are left alone).  Kernel-shaped ones:

- ``delete``       an added statement becomes ``;``
- ``drop_release`` the statement deleted is an unlock, a put or a free
- ``drop_wakeup``  the statement deleted is a wakeup (wake_up, napi_schedule,
                   raise_softirq, an IPI, complete)
- ``lock_plain``   a ``_bh``/``_irq``/``_irqsave`` lock or unlock becomes the
                   plain variant (irqsave keeps its flags valid)
- ``negate``       an if/while condition, or a boolean assignment, is negated
- ``drop_jump``    an early return/continue/goto/break becomes ``;``
- ``flag_zero``    a flag update (``|= X``, ``&= ~X``) becomes ``= 0``
- ``swap_incdec``  ``++`` becomes ``--`` and back
- ``no_wait``      an added wait loop ``while (C)`` never runs (``if (0)``)
- ``const``        an integer literal becomes 0 or 1, true/false swap

and the classic ones of mutation testing, chosen the way "sufficient
operator" studies chose them (one boundary shift per relation, not all five
replacements of universalmutator's rules, which mostly fail to build or
repeat each other):

- ``boundary``     ``<`` <-> ``<=``, ``>`` <-> ``>=``; ``==`` <-> ``!=`` where
                   negating the whole condition is not already the same mutant
- ``arith``        binary ``+`` <-> ``-``, ``+=`` <-> ``-=``, ``<<`` <-> ``>>``
- ``sibling``      a macro or enum constant becomes the one defined next to
                   it in its family (``TCQ_F_NOLOCK`` -> ``TCQ_F_CPUSTATS``);
                   needs the ``Constants`` of the files the patch touches
- ``swap_arg``     a call's argument becomes another variable of the same
                   declared type in the hunk (a parameter or a local)

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
    # "spinlock_t *lock = NULL;" / "u32 n = 0;": "a * b =" and "a b =" are no expression
    typed_init = re.match(r"^[A-Za-z_]\w*(\s*\*+\s*|\s+)[A-Za-z_]\w*\s*=[^=]", t)
    if typed_init and not t.startswith(("return", "goto", "else")):
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


def mutants(patch: Patch, constants: Constants | None = None) -> list[Mutant]:
    """Every mutant of the patch's added code lines; ``constants`` (the
    families of macros and enums the touched files see) enables ``sibling``."""
    out: list[Mutant] = []
    for fp in patch.files:
        if not fp.is_code:
            continue
        declared = {id(h): _declared(h) for h in fp.hunks}
        for st in statements(fp):
            name = fp.path.rsplit("/", 1)[-1]
            for operator, replacement in _mutations(st, constants, declared[id(st.hunk)]):
                out.append(Mutant(f"{name}:{st.line_no}:{operator}", operator, fp.path, st.line_no, st,
                                  replacement))
    seen: dict[str, int] = {}
    for m in out:  # unique names when one statement yields several of a kind
        n = seen[m.id] = seen.get(m.id, 0) + 1
        if n > 1:
            m.id = f"{m.id}:{n}"
    return out


def _mutations(st: Statement, constants: Constants | None = None, declared: dict[str, str] | None = None):
    """(operator, replacement text of the statement's span) pairs."""
    text, src = st.text, st.source()
    if st.header:
        negated = st.header in ("if", "while")
        if negated:
            yield "negate", _wrap_condition(src, st.header)
        if st.header == "while":
            yield "no_wait", _replace_condition(src, "while", "if (0)")
        yield from _classic(src, constants, skip_equality=negated and _single_relation(text))
        return
    # a label before the statement ("nodefer: kfree_skb(skb);") stays: a goto needs it
    label = _LABEL.match(src)
    if label and label.group(1) not in ("default", "case"):
        in_text = _LABEL.match(text)
        text, src = text[in_text.end():] if in_text else text, src[label.end():]
    for operator, replacement in _statement_mutations(st, text, src, constants, declared or {}):
        yield operator, (label.group(0) if label else "") + replacement


_LABEL = re.compile(r"^\s*([A-Za-z_]\w*)\s*:(?!:)\s*")
# statements whose deletion changes no behaviour of a working kernel: assertions and log lines
_NOT_BEHAVIOUR = re.compile(r"^(DEBUG_NET_WARN\w*|WARN\w*|BUILD_BUG_ON\w*|BUG_ON|VM_BUG_ON\w*|VM_WARN\w*|"
                            r"lockdep_assert\w*|might_sleep|pr_\w+|printk\w*|(dev|netdev|net)_(err|warn|info|dbg|notice)"
                            r"\w*|net_\w+_ratelimited|trace_\w+)\s*\(")


def _statement_mutations(st: Statement, text: str, src: str, constants: Constants | None, declared: dict[str, str]):
    if not text.endswith(";") or text.strip() == ";" or text.startswith((".", "{")) or _is_declaration(text):
        return
    jump = _JUMP.match(text)
    if jump:
        # an early exit; the last return of a function is not dropped.  Braces,
        # not ";": an empty if body is -Werror=empty-body and would not build.
        if st.in_if:
            yield "drop_jump", "{ }  /* mutant: dropped */"
        if text.startswith("return"):
            yield from _const(src)
            yield from _classic(src, constants)
            yield from _swap_args(src, declared)
        return
    if _NOT_BEHAVIOUR.match(text):
        return
    yield _deletion(text), "{ }  /* mutant: deleted */"
    plain = _plain_lock(text)
    if plain:
        yield "lock_plain", plain
    flag = _FLAG_UPDATE.match(text)
    if flag:
        yield "flag_zero", f"{flag.group('lhs')} = 0;"
    if re.fullmatch(r"[\w.\->\[\]]+\s*(\+\+|--)\s*;|(\+\+|--)\s*[\w.\->\[\]]+\s*;", text):
        yield "swap_incdec", _INCDEC.sub(lambda m: "--" if m.group(1) == "++" else "++", src)
    assign = _ASSIGN.match(text)
    negated = bool(assign and _BOOLEAN_RHS.search(assign.group("rhs")))
    if negated:
        yield "negate", _negate_rhs(src)
    yield from _const(src)
    yield from _classic(src, constants, skip_equality=negated and _single_relation(text))
    yield from _swap_args(src, declared)


# --- the classic operators --------------------------------------------------------

_RELATION = re.compile(r"(?<![<>=!\-])(<=|>=|<|>)(?![<>=])")
_EQUALITY = re.compile(r"(?<![<>=!])(==|!=)(?!=)")
_BOUNDARY = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}
_SHIFT = re.compile(r"(<<|>>)(=?)")
_ADDSUB = re.compile(r"(?<![+\-])([+-])(?![+\-=>])")
_ADDSUB_ASSIGN = re.compile(r"(?<![+\-])([+-])=")
_OPERAND_END = re.compile(r"[\w)\]]\s*$")
_NOT_OPERAND = re.compile(r"\b(return|case|sizeof)\s*$")
_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b(?!\s*\()")
_CALL = re.compile(r"\b(\w+)\s*\(")
_NOT_CALLS = {"if", "while", "for", "switch", "return", "sizeof", "typeof", "__typeof__", "offsetof",
              "READ_ONCE", "WRITE_ONCE", "likely", "unlikely", "container_of"}
_LOGGING = re.compile(r"^(pr_\w+|printk\w*|(dev|netdev|net)_(err|warn|info|dbg|notice)\w*|net_\w+_ratelimited|"
                      r"WARN\w*|BUG_ON|trace_\w+|seq_printf|pr_cont)$")
_RELEASE = re.compile(r"(^|_)(unlock|put|free|release|destroy|purge|unref)(_|$)|^(kfree|vfree|kvfree)\w*$|"
                      r"^(consume_skb|up|up_read|up_write|rcu_read_unlock\w*|local_bh_enable|preempt_enable)$")
_WAKEUP = re.compile(r"^(_*wake_up\w*|wakeup\w*|_*raise_softirq\w*|_*napi_schedule\w*|smp_call_function\w*|"
                     r"complete|complete_all|kick_\w+|sk_data_ready|sk_write_space|netif_\w*wake\w*|"
                     r"_*netif_schedule\w*|tasklet_schedule|tasklet_hi_schedule|queue_work\w*|schedule_work|"
                     r"mod_timer|swake_up\w*|kill_fasync)$")
_LOCK_BH_IRQ = re.compile(r"^(?P<lock>(raw_)?(spin|read|write)_(un)?lock|rcu_read_(un)?lock)_(bh|irq)\s*\(")
_LOCK_IRQSAVE = re.compile(
    r"^(?P<lock>(raw_)?(spin|read|write)_lock)_irqsave\s*\((?P<arg>.+),\s*(?P<flags>\w+)\s*\)\s*;$", re.S)
_UNLOCK_IRQRESTORE = re.compile(
    r"^(?P<lock>(raw_)?(spin|read|write)_unlock)_irqrestore\s*\((?P<arg>.+),\s*\w+\s*\)\s*;$", re.S)


def _code(src: str) -> str:
    """``src`` with comments and string contents blanked, columns kept."""
    out = []
    for line in src.split("\n"):
        code = _blank_comments(line, False)[0]
        out.append(re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', code))
    return "\n".join(out)


def _single_relation(text: str) -> bool:
    """One comparison and no && || ?: negating it is the same as flipping it."""
    return (not re.search(r"&&|\|\||\?", text)
            and len(_EQUALITY.findall(text)) + len(_RELATION.findall(text)) == 1)


def _classic(src: str, constants: Constants | None, skip_equality: bool = False):
    code = _code(src)
    spans: list[tuple[int, int, str, str]] = []
    for m in _RELATION.finditer(code):
        spans.append((m.start(), m.end(), _BOUNDARY[m.group(1)], "boundary"))
    if not skip_equality:
        for m in _EQUALITY.finditer(code):
            spans.append((m.start(), m.end(), _BOUNDARY[m.group(1)], "boundary"))
    for m in _SHIFT.finditer(code):
        spans.append((m.start(), m.end(), (">>" if m.group(1) == "<<" else "<<") + m.group(2), "arith"))
    for m in _ADDSUB_ASSIGN.finditer(code):
        spans.append((m.start(), m.end(), ("-" if m.group(1) == "+" else "+") + "=", "arith"))
    for m in _ADDSUB.finditer(code):
        before = code[:m.start()]
        if code[m.end():m.end() + 1] == "=" or not _OPERAND_END.search(before) or _NOT_OPERAND.search(before):
            continue  # unary, or an assignment handled above
        spans.append((m.start(), m.end(), "-" if m.group(1) == "+" else "+", "arith"))
    if constants is not None:
        for m in _CONSTANT.finditer(code):
            sibling = constants.sibling(m.group(0))
            if sibling:
                spans.append((m.start(), m.end(), sibling, "sibling"))
    for start, end, new, operator in sorted(spans):
        yield operator, src[:start] + new + src[end:]


def _call_args(code: str, open_pos: int) -> list[tuple[int, int]]:
    """(start, end) of each top-level argument of the call whose ``(`` is at open_pos."""
    args, depth, start = [], 0, open_pos + 1
    for i in range(open_pos, len(code)):
        ch = code[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                args.append((start, i))
                return args
        elif ch == "," and depth == 1:
            args.append((start, i))
            start = i + 1
    return []


def _swap_args(src: str, declared: dict[str, str]):
    """A call's plain-variable argument replaced by the next variable of the
    same declared type."""
    if len(declared) < 2:
        return
    code = _code(src)
    by_type: dict[str, list[str]] = {}
    for name, kind in declared.items():
        by_type.setdefault(kind, []).append(name)
    for call in _CALL.finditer(code):
        if call.group(1) in _NOT_CALLS or _LOGGING.match(call.group(1)):
            continue
        for a, b in _call_args(code, call.end() - 1):
            arg = code[a:b].strip()
            peers = by_type.get(declared.get(arg, ""), [])
            others = [n for n in peers if n != arg]
            if arg in declared and others:
                at = a + code[a:b].index(arg)
                yield "swap_arg", src[:at] + others[(peers.index(arg)) % len(others)] + src[at + len(arg):]


def _deletion(text: str) -> str:
    """The name of deleting this statement: an unlock/put/free, a wakeup, or
    any other statement."""
    call = re.match(r"^(?:[\w.\->\[\]()*&]*?(?:\.|->))?(\w+)\s*\(", text)
    if call:
        if _WAKEUP.match(call.group(1)):  # first: kick_defer_list_purge is a wakeup
            return "drop_wakeup"
        if _RELEASE.search(call.group(1)) and not call.group(1).startswith("smp_"):  # smp_store_release: a barrier
            return "drop_release"
    return "delete"


def _plain_lock(text: str) -> str | None:
    """The plain variant of a _bh/_irq/_irqsave lock or unlock statement."""
    m = _LOCK_IRQSAVE.match(text)
    if m:  # interrupts stay enabled; the flags are still set for the restore
        return f"local_save_flags({m.group('flags')}); {m.group('lock')}({m.group('arg').strip()});"
    m = _UNLOCK_IRQRESTORE.match(text)
    if m:
        return f"{m.group('lock')}({m.group('arg').strip()});"
    m = _LOCK_BH_IRQ.match(text)
    if m:
        return m.group("lock") + text[text.index("("):]
    return None


# --- what a hunk declares (for swap_arg) ----------------------------------------------

_DECLARATOR = re.compile(r"^(?P<stars>\**)\s*(?P<name>[A-Za-z_]\w*)\s*(?P<array>\[)?")
_TYPE = re.compile(r"^(?P<type>(?:(?:const|volatile|static|register|unsigned|signed|struct|union|enum)\s+)*"
                   r"[A-Za-z_]\w*)\s*(?P<rest>[\s\S]*)$")
_QUALIFIERS = re.compile(r"\b(const|volatile|static|register)\s+")


def _declared(hunk: Hunk) -> dict[str, str]:
    """Variables the hunk's new side declares (parameters of a function
    header in it, and locals) -> their type with its pointer stars; arrays
    are left out."""
    code = "\n".join(_blank_comments(text, False)[0] for _, _, text, _ in hunk.new_side()
                     if not text.lstrip().startswith("#"))
    found: dict[str, str] = {}

    def add(decl: str):
        m = _TYPE.match(decl.strip())
        if not m or m.group("type").split()[-1] in ("return", "goto", "case", "else", "do"):
            return
        kind = _QUALIFIERS.sub("", m.group("type")).strip()
        for part in _split_top(m.group("rest")):
            declarator = part.split("=", 1)[0].strip()
            d = _DECLARATOR.match(declarator)
            if d and declarator[d.end():].lstrip().startswith("("):
                return  # a function's prototype or definition, not a variable
            if d and not d.group("array") and d.group("name") not in found:
                found[d.group("name")] = f"{kind} {d.group('stars')}".strip()

    for header in re.finditer(r"(?m)^[A-Za-z_][\w\s*]*?\b\w+\s*\((?P<params>[^;{}()]*)\)\s*\{", code):
        for param in _split_top(header.group("params")):
            if param.strip() not in ("void", "..."):
                add(param)
    for piece in re.split(r"[;{}]", code):
        piece = piece.strip()
        if piece and _is_declaration(piece + ";"):
            add(piece)
    return found


def _split_top(text: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [p for p in out if p.strip()]


# --- macro and enum families (for sibling) --------------------------------------------

_DEFINE = re.compile(r"^#\s*define\s+([A-Z][A-Z0-9_]*)(?=[\s]|$)")
_ENUM_START = re.compile(r"^\s*(typedef\s+)?enum\b[^;]*\{\s*$")
_ENUM_MEMBER = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*(=[^,]*)?,?\s*(/\*.*|//.*)?$")
_INCLUDE = re.compile(r'^#\s*include\s*[<"]([\w./+-]+\.h)[>"]', re.M)


@dataclasses.dataclass
class Constants:
    """Families of object-like macros and enum members: an enum's members,
    or a run of adjacent ``#define``s sharing their first word (comment lines
    do not break a run).  ``sibling(name)`` is the one defined after it, or
    before it for the last of a family."""
    families: dict[str, list[str]]      # name -> its family, in definition order

    @classmethod
    def scan(cls, texts) -> Constants:
        families: dict[str, list[str]] = {}

        def close(run: list[str]):
            for name in run:
                if len(run) > 1:
                    families.setdefault(name, run)

        for text in texts:
            run: list[str] = []
            in_enum = in_comment = continued = False
            for raw in text.split("\n"):
                line, in_comment = _blank_comments(raw, in_comment)
                stripped = line.strip()
                was_continued, continued = continued, raw.rstrip().endswith("\\")
                if was_continued:
                    continue  # the value of a multi-line #define
                if in_enum:
                    if stripped.startswith("}"):
                        close(run)
                        run, in_enum = [], False
                    else:
                        m = _ENUM_MEMBER.match(line)
                        if m and not m.group(1).startswith("__"):
                            run.append(m.group(1))
                    continue
                if _ENUM_START.match(line):
                    close(run)
                    run, in_enum = [], True
                    continue
                m = _DEFINE.match(stripped)
                if m:
                    name = m.group(1)
                    if run and run[0].split("_", 1)[0] != name.split("_", 1)[0]:
                        close(run)
                        run = []
                    run.append(name)
                elif raw.strip() and not stripped:
                    continue  # a comment line does not break a run
                else:
                    close(run)
                    run = []
            close(run)
        return cls(families)

    def sibling(self, name: str) -> str | None:
        family = self.families.get(name)
        if not family:
            return None
        i = family.index(name)
        other = family[i + 1] if i + 1 < len(family) else family[i - 1]
        return other if other != name else None


def constants_for(patch: Patch, files: Callable[[list[str]], dict[str, bytes]]) -> Constants:
    """The families the patch's code files see: the files themselves (as
    patched: their added lines count), and the headers they include (one
    level, from include/ and include/uapi/, or beside the file).  ``files``
    reads several pristine files at once (``Source.files``)."""
    code = [fp for fp in patch.files if fp.is_code]
    texts = ["\n".join(l[1:] for h in fp.hunks for l in h.lines if l.startswith("+")) for fp in code]
    sources = {path: data.decode(errors="replace") for path, data in files([fp.path for fp in code]).items()}
    headers: list[str] = []
    for path, text in sources.items():
        here = path.rsplit("/", 1)[0] if "/" in path else ""
        for header in _INCLUDE.findall(text):
            headers += [f"include/{header}", f"include/uapi/{header}", f"{here}/{header}"]
    found = files(sorted(set(headers))) if headers else {}
    texts += sources.values()
    texts += (data.decode(errors="replace") for data in found.values())
    return Constants.scan(texts)


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

_TARGET = re.compile(r"^(?P<file>[\w./+-]+\.[ch]):(?:(?P<a>\d+)-(?P<b>\d+)|(?P<function>\w+)(?P<optional>\?)?)$")


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
    """A targets file: one ``FILE:FUNCTION``, ``FILE:FUNCTION?`` (where the
    source has it) or ``FILE:A-B`` a line; ``#`` starts a comment."""
    targets = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not _TARGET.match(line):
            raise PatchError(f"{source}:{n}: {line!r}: expected FILE:FUNCTION or FILE:A-B (a .c or .h file)")
        targets.append(line)
    return targets


_SELECTION = re.compile(r"Selection:\s*-k\s+(?:\"([^\"]+)\"|(\S+))")


def targets_selection(text: str) -> str | None:
    """The test selection a targets file's comments name ("Selection: -k
    defer_free" or -k "a or b"): the tests that check the seed's claims."""
    m = _SELECTION.search(text)
    return (m.group(1) or m.group(2)) if m else None


def targets_patch(targets: list[str], files: Callable[[list[str]], dict[str, bytes]]) -> str:
    """One no-op patch over every target (``FILE:FUNCTION`` or ``FILE:A-B``;
    ``FILE:FUNCTION?`` is optional: skipped where the source has no such
    function, for targets files that serve several kernel versions), the
    files read with ``files`` (a Source's pristine tree, several at once)."""
    parsed = []
    for target in targets:
        m = _TARGET.match(target)
        if m is None:
            raise PatchError(f"{target!r}: expected FILE:FUNCTION or FILE:A-B (a .c or .h file)")
        parsed.append((target, m))
    wanted = sorted({m.group("file") for _, m in parsed})
    texts = {path: data.decode(errors="replace") for path, data in files(wanted).items()}
    ranges: dict[str, list[tuple[int, int]]] = {}
    for target, m in parsed:
        path = m.group("file")
        if path not in texts:
            raise PatchError(f"{target}: the source has no {path}")
        if m.group("function") is None:
            span = (int(m.group("a")), int(m.group("b")))
        else:
            try:
                span = find_function(texts[path], m.group("function"), path)
            except PatchError:
                if m.group("optional"):
                    continue
                raise
        ranges.setdefault(path, []).append(span)
    if not ranges:
        raise PatchError(f"none of the optional targets is in this source: {', '.join(targets)}")
    return "".join(lines_patch(path, texts[path], spans) for path, spans in ranges.items())
