"""kbuild.Tree on a fake kernel source: a Makefile that "compiles" each
.c file into a .o only when it changed, so the test sees exactly what an
incremental variant build recompiles."""
import os
from pathlib import Path

import pytest

from harness.kernel import build as kbuild

MAKEFILE = r'''
SRCS := $(wildcard net/*.c)
OBJS := $(SRCS:.c=.o)
defconfig kvm_guest.config:
	@touch .config
olddefconfig:
	@sed -i '/CONFIG_NEEDS_A_DEPENDENCY/d' .config
%.o: %.c include/x.h
	@cp $< $@ && echo $< >> compiled.log
bzImage: $(OBJS)
	@mkdir -p arch/x86/boot && cat $(OBJS) > vmlinux && cp vmlinux arch/x86/boot/bzImage && echo map > System.map
'''
# merge_config.sh: the fake appends every fragment to .config, so every
# requested option "survives olddefconfig"
MERGE = "#!/bin/sh\nshift 3; cat \"$@\" >> .config\n"


def patch(path, old, new):
    return (f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{old}\n+{new}\n")


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: None)  # no ccache

    def prepare(work: Path):
        (work / "net").mkdir(parents=True)
        (work / "include").mkdir()
        (work / "scripts/kconfig").mkdir(parents=True)
        (work / "Makefile").write_text(MAKEFILE)
        (work / "scripts/kconfig/merge_config.sh").write_text(MERGE)
        os.chmod(work / "scripts/kconfig/merge_config.sh", 0o755)
        (work / "include/x.h").write_text("header\n")
        (work / "net/a.c").write_text("a\n")
        (work / "net/b.c").write_text("b\n")

    files = {"tools/testing/selftests/net/config": b"CONFIG_VETH=y\nCONFIG_NEEDS_A_DEPENDENCY=y\n"}

    def read(rel: str) -> bytes:
        if rel not in files:
            raise FileNotFoundError(rel)
        return files[rel]

    return kbuild.Source("fake", "fake=1", prepare, read)


def compiled(tree):
    log = tree.work / "compiled.log"
    text = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return sorted(text)


def test_variants_recompile_only_what_they_change(source):
    with kbuild.Tree(source) as tree:
        plain = tree.build([])
        assert compiled(tree) == ["net/a.c", "net/b.c"]
        assert (plain / "bzImage").read_text() == "a\nb\n"
        patched = tree.build([patch("net/a.c", "a", "A")])
        assert compiled(tree) == ["net/a.c"]
        assert (patched / "bzImage").read_text() == "A\nb\n"
        # a variant of the same file: its text comes from the pristine file, not the last build
        other = tree.build([patch("net/a.c", "a", "A2")])
        assert (other / "bzImage").read_text() == "A2\nb\n"
        assert compiled(tree) == ["net/a.c"]
        # back to the plain source: a.c is restored, b.c untouched
        plain.rename(plain.with_name("gone"))
        again = tree.build([])
        assert compiled(tree) == ["net/a.c"]
        assert (again / "bzImage").read_text() == "a\nb\n"


def test_outputs_are_cached_by_their_inputs(source):
    text = patch("net/b.c", "b", "B")
    with kbuild.Tree(source) as tree:
        first = tree.build([text])
        compiled(tree)
        assert tree.build([text]) == first
        assert compiled(tree) == []
    # a plain build of the same inputs finds the same output
    assert kbuild.build(source, patches=[text]) == first


def test_a_patch_that_does_not_apply_names_itself(source, tmp_path):
    bad = tmp_path / "bad.patch"
    bad.write_text(patch("net/a.c", "not there", "x"))
    with kbuild.Tree(source) as tree:
        with pytest.raises(kbuild.BuildError, match="bad.patch: does not apply"):
            tree.build([bad])
        # the tree is left as it was: the next build is the plain source
        assert (tree.build([]) / "bzImage").read_text() == "a\nb\n"


def test_touched_files_of_a_diff():
    text = ("--- a/net/x.c\n+++ b/net/x.c\n@@ -1 +1 @@\n-a\n+b\n"
            "--- a/net/gone.c\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n"
            "--- /dev/null\n+++ b/net/new.c\n@@ -0,0 +1 @@\n+a\n")
    assert kbuild.touched_files(text) == ["net/x.c", "net/gone.c", "net/new.c"]


def test_a_kselftest_config_is_merged_and_what_did_not_survive_is_named(source, tmp_path):
    """build-kernel --ksft-config net: the collection's config is merged; an
    option olddefconfig drops is named in the output, not an error; the
    same option in the caller's own fragment is an error."""
    net = kbuild.collection_config(source, "net")
    out = kbuild.build(source, soft_fragments=[net])
    assert "CONFIG_VETH=y" in (out / ".config").read_text()
    assert (out / kbuild.SOFT_MISSING).read_text() == "CONFIG_NEEDS_A_DEPENDENCY=y (got n)\n"
    with pytest.raises(kbuild.BuildError, match="--ksft-config net/forwarding: fake=1 has no "
                                                "tools/testing/selftests/net/forwarding/config"):
        kbuild.collection_config(source, "net/forwarding")
    own = tmp_path / "own.config"
    own.write_text("CONFIG_NEEDS_A_DEPENDENCY=y\n")
    with pytest.raises(kbuild.BuildError, match="CONFIG_NEEDS_A_DEPENDENCY=y \\(got n\\)"):
        kbuild.build(source, fragments=[own])
