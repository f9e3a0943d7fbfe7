"""skinnet review app: ``python app.py`` (also the Hugging Face Space's app_file).

Flags override environment variables, which override the defaults:

    --checkpoint  SKINNET_CHECKPOINT   checkpoints/skinnet_lite2.safetensors
    --host        GRADIO_SERVER_NAME   127.0.0.1 (0.0.0.0 on a Space)
    --port        GRADIO_SERVER_PORT   7860
    --log-dir     SKINNET_LOG_DIR      ./corrections (reviewers' corrections and their images)
    --users       SKINNET_USERS        a file of "user:password" lines, or (env, e.g. a Space
                                       secret) "user:password,user2:password2"; none: public demo
    --hf-reviewers SKINNET_HF_REVIEWERS Hugging Face usernames ("alice,bob"; "*": anyone signed
                                       in) who may save after "Sign in with Hugging Face" on a
                                       Space with `hf_oauth: true` (its README metadata)
    --queue-root  SKINNET_QUEUE_ROOT   ./queues: the folder reviewers pick queue files from
                                       (manifests, Derm7pt meta.csv); nothing outside it opens
    --admins      SKINNET_ADMINS       reviewers who may also export everyone's labels
                                       ("dr_a,hf:alice"); none: export from the command line only
    --examples    SKINNET_EXAMPLES     a folder of example pairs to show (NAME_clinical.png,
                                       NAME_dermoscopy.png); none: no examples
    --backup      SKINNET_BACKUP       back the review log up to a private Hugging Face dataset
                                       ("owner/name", token from HF_TOKEN) or a folder ("file:PATH"):
                                       restored at start, pushed every 5 minutes and at shutdown
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from skinnet.checkpoint import DEFAULT_CHECKPOINT

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    on_space = "SPACE_ID" in env
    p = argparse.ArgumentParser(prog="python app.py", description="skinnet review app")
    p.add_argument("--checkpoint", default=env.get("SKINNET_CHECKPOINT", str(DEFAULT_CHECKPOINT)))
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--log-dir", default=env.get("SKINNET_LOG_DIR", str(ROOT / "corrections")))
    p.add_argument("--users", default=env.get("SKINNET_USERS"), help="file of user:password lines")
    p.add_argument("--hf-reviewers", default=env.get("SKINNET_HF_REVIEWERS"),
                   help="comma-separated Hugging Face usernames allowed to save ('*': any signed-in account)")
    p.add_argument("--queue-root", default=env.get("SKINNET_QUEUE_ROOT", str(ROOT / "queues")),
                   help="folder that queue files and their images must lie in (links are resolved)")
    p.add_argument("--admins", default=env.get("SKINNET_ADMINS"),
                   help="comma-separated reviewer identities (user, hf:user) who may export everyone's labels")
    p.add_argument("--examples", default=env.get("SKINNET_EXAMPLES"),
                   help="folder of example pairs (NAME_clinical.EXT, NAME_dermoscopy.EXT) shown to every visitor")
    p.add_argument("--backup", default=env.get("SKINNET_BACKUP"),
                   help="private dataset 'owner/name' (token: HF_TOKEN) or 'file:PATH' to back the review log up to")
    p.add_argument("--device", default=env.get("SKINNET_DEVICE", "cpu"))
    return p.parse_args(argv)


def read_users(source: str | None) -> dict[str, str]:
    """Reviewers' logins from a file (``user:password`` per line; blank lines and ``#``
    comments ignored) or, when ``source`` is not a file, inline ``user:password,user:password``."""
    if not source:
        return {}
    path = Path(source)
    if path.is_file():
        lines, where = path.read_text().splitlines(), str(path)
    elif ":" in source:
        lines, where = source.split(","), "SKINNET_USERS"
    else:
        raise SystemExit(f"users file {source} not found")
    users = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise SystemExit(f"{where} entry {number}: expected 'user:password'")
        users[user.strip()] = password
    return users


SPACE_OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
"""What a Space with `hf_oauth: true` sets, and what Gradio's real sign-in routes need."""


def read_hf_reviewers(source: str | None) -> frozenset[str]:
    """The Hugging Face allow-list; refused unless Gradio will use its real sign-in routes.

    Gradio picks them only where its own Space test passes (``SYSTEM=spaces`` and a
    ``SPACE_ID``); anywhere else it installs a mock that signs every visitor in as the host's
    own Hugging Face account (from the host's token), which the allow-list would then admit.
    """
    names = frozenset(n.strip().lstrip("@") for n in (source or "").split(",") if n.strip())
    if not names:
        return names
    from gradio.utils import get_space  # the very test Gradio's sign-in uses

    missing = ([] if get_space() else ["SYSTEM=spaces with SPACE_ID"]) + \
        [v for v in SPACE_OAUTH_VARIABLES if not os.environ.get(v)]
    if missing:
        raise SystemExit("--hf-reviewers needs Hugging Face sign-in, which only a Space provides when its README "
                         f"metadata says `hf_oauth: true` (missing here: {', '.join(missing)}). "
                         "Elsewhere use --users.")
    return names


def read_names(source: str | None) -> frozenset[str]:
    return frozenset(n.strip() for n in (source or "").split(",") if n.strip())


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from skinnet.predict import Predictor
    from skinnet.ui import AppSettings, build_app, launch
    from skinnet.ui.examples import read_examples

    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"skinnet: cannot load the model: {err}") from None
    settings = AppSettings(checkpoint=Path(args.checkpoint), host=args.host, port=args.port,
                           log_dir=Path(args.log_dir), users=read_users(args.users),
                           hf_reviewers=read_hf_reviewers(args.hf_reviewers),
                           queue_root=Path(args.queue_root) if args.queue_root else None,
                           admins=read_names(args.admins),
                           examples=Path(args.examples) if args.examples else None, backup=args.backup)
    try:
        examples = read_examples(settings.examples)
    except ValueError as err:
        raise SystemExit(f"skinnet: {err}") from None
    # a Space stops its container with SIGTERM: exit as from Ctrl+C, so the review log's last
    # backup runs (atexit) before the process goes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    launch(build_app(predictor, settings, examples), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
