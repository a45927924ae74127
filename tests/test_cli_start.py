import subprocess
import sys


def test_help_does_not_import_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom dltool.cli import app\n"
            "result = CliRunner().invoke(app, ['--help'])\n"
            "assert result.exit_code == 0, result.output\n"
            "assert 'torch' not in sys.modules and 'tensorboard' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_help_does_not_import_torch_and_says_what_it_checks():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom dltool.cli import app\n"
            "result = CliRunner().invoke(app, ['config', '--help'])\n"
            "assert result.exit_code == 0, result.output\n"
            "assert 'torch' not in sys.modules and 'tensorboard' not in sys.modules\n"
            "text = ' '.join(result.output.split())\n"
            "for word in ('transforms', 'batch_transforms', 'every layer', 'the loss', 'the optimizer',"
            " 'the scheduler', 'model.input_shape'):\n"
            "    assert word in text, word\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_process_ends_with_the_commands_code_and_all_its_output(tmp_path):
    """`dltool` ends its process without unloading torch & co.: every byte still reaches the pipe,
    and the exit code is the command's."""
    import json

    listed = subprocess.run([sys.executable, "-m", "dltool", "list", "layers", "--json"], capture_output=True,
                            text=True, cwd=tmp_path)
    assert listed.returncode == 0 and "Conv2d" in json.loads(listed.stdout)
    refused = subprocess.run([sys.executable, "-m", "dltool", "config", "missing.yaml"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr == "error: config file not found: missing.yaml\n"


def test_a_thread_still_working_keeps_the_ordinary_exit():
    import threading

    import pytest

    from dltool.cli.commands import exit_now

    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit) as ended:
            exit_now(3)
        assert ended.value.code == 3
    finally:
        release.set()
        worker.join()
