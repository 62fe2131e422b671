import os
import sys

from harness.invocation import pytest_args, pytest_argv


def test_a_child_run_gets_absolute_paths_and_no_cache_and_its_args_last():
    argv = pytest_argv("tests/x.py", "-x", kernel="build/bzImage", accel="tcg", k="a or b",
                       logs="logs", junit="j.xml", quiet=True)
    assert argv[:3] == [sys.executable, "-m", "pytest"]
    assert argv[3:] == ["-p", "no:cacheprovider", "-q", "--kernel", os.path.abspath("build/bzImage"),
                        "--harness-logs", os.path.abspath("logs"), f"--junitxml={os.path.abspath('j.xml')}",
                        "--accel", "tcg", "-k", "a or b", "tests/x.py", "-x"]


def test_options_left_out_are_not_passed():
    assert pytest_args("t.py", kernel=None, modules="", k=None) == ["-p", "no:cacheprovider", "t.py"]


def test_a_kernel_path_error_names_its_field_and_the_cli_names_the_option(tmp_path):
    import pytest
    from harness.invocation import named_by_option
    from harness.kernel.kernel import Kernel, KernelPathError
    with pytest.raises(KernelPathError) as bad_image:
        Kernel.from_path(tmp_path / "none")
    assert bad_image.value.field == "image" and str(bad_image.value).startswith(f"{tmp_path / 'none'}: no such file")
    assert named_by_option(bad_image.value).startswith(f"--kernel {tmp_path / 'none'}: no such file")
