"""The `minisink` subcommands, one module per group; each command is one `add_<cmd>(subparsers)` that declares its
parser beside one `cmd_<cmd>(args)` that runs it. The options they share are declared once, in minisink/cli.py."""

from .course import add_assignment
from .evaluation import add_calibrate, add_ppl, add_streameval, add_tune
from .fetching import add_fetch
from .generation import add_chat, add_generate
from .inspection import add_attn, add_bench
from .training import add_train

COMMANDS = [add_generate, add_chat, add_bench, add_ppl, add_calibrate, add_streameval, add_tune, add_attn,
            add_train, add_assignment, add_fetch]  # in the order `minisink --help` lists them
