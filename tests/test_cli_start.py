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
