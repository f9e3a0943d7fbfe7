"""The review log's backup (skinnet.backup): a restart with an empty disk gets every backed-up
review back, the backup never takes a shorter log, and replicas with disks of their own meet
through it. The remote is a folder behind the same calls as huggingface_hub.HfApi."""
import inspect
import secrets
import shutil

import pytest

from app_helpers import tiny_checkpoint
from skinnet_testkit.raw_http import RawClient
from skinnet_testkit.app_process import PASSWORD, USER, App
from skinnet.backup import Backup, FolderHub, backup_for
from skinnet.corrections import CorrectionsError, CorrectionsLog, read_corrections
from skinnet_testkit.queues import write_manifest
from skinnet_testkit.reviews import review
from test_security import case_shown, fns, open_first_case, save_data


class RecordingHub(FolderHub):
    """A FolderHub that remembers each call, to check them against huggingface_hub's own signatures."""

    def __init__(self, root):
        super().__init__(root)
        self.calls = []
        for name in ("create_repo", "list_repo_tree", "hf_hub_download", "create_commit"):
            method = getattr(super(), name)

            def record(*args, _name=name, _method=method, **kwargs):
                self.calls.append((_name, args, kwargs))
                return _method(*args, **kwargs)
            setattr(self, name, record)


def test_every_call_the_backup_makes_fits_huggingface_hub(tmp_path):
    """The folder transport stands in for HfApi only at the transport: every call the backup made
    (restore, push, pull) binds to the real HfApi method, and FolderHub's own signatures accept it."""
    from huggingface_hub import HfApi

    log = CorrectionsLog(tmp_path / "disk")
    hub = RecordingHub(tmp_path / "remote")
    backup = Backup(log, hub, "owner/reviews")
    backup.restore()
    log.append(review(case_id="1"))
    backup.sync()
    other = Backup(CorrectionsLog(tmp_path / "other"), hub, "owner/reviews")
    other.restore()  # downloads
    assert {name for name, _, _ in hub.calls} == {"create_repo", "list_repo_tree", "hf_hub_download",
                                                 "create_commit"}
    api = HfApi(token=False)
    for name, args, kwargs in hub.calls:
        inspect.signature(getattr(HfApi, name)).bind(api, *args, **kwargs)
    assert backup_for("owner/reviews", log).api.__class__ is HfApi
    with pytest.raises(ValueError, match="owner/name"):
        backup_for("not a repo", log)


def test_the_backup_never_takes_a_shorter_log_and_gives_back_a_longer_one(tmp_path):
    log = CorrectionsLog(tmp_path / "disk")
    backup = Backup(log, FolderHub(tmp_path / "remote"), "o/r")
    backup.restore()
    for i in range(3):
        log.append(review(case_id=str(i)))
    backup.sync()
    remote_shard = tmp_path / "remote" / log.path.relative_to(log.folder)
    full = remote_shard.read_bytes()
    cut = full[:full.rfind(b"\n", 0, len(full) - 1) + 1]  # the disk lost its last row
    log.path.write_bytes(cut)
    assert backup.push() == 0 and remote_shard.read_bytes() == full
    assert backup.status.refused == [log.path.relative_to(log.folder).as_posix()]
    assert backup.pull() == 1 and log.path.read_bytes() == full  # and the pull gives it back
    assert [r["case_id"] for r in read_corrections(log.folder)[0]] == ["0", "1", "2"]
    # a row still being written is not sent: the backup holds whole rows only
    with open(log.path, "ab") as handle:
        handle.write(b"0123,half a row")
    assert backup.push() == 0 and remote_shard.read_bytes() == full


def test_replicas_with_disks_of_their_own_meet_through_the_backup(tmp_path):
    remote = FolderHub(tmp_path / "remote")
    a, b = CorrectionsLog(tmp_path / "a"), CorrectionsLog(tmp_path / "b")
    backup_a, backup_b = Backup(a, remote, "o/r"), Backup(b, remote, "o/r")
    backup_a.restore(), backup_b.restore()
    a.append(review(case_id="1", reviewer="dr_a"))
    backup_a.sync()
    backup_b.sync()
    assert b.latest_review("dr_a", "1")["case_id"] == "1"
    b.append(review(case_id="2", reviewer="dr_b"))
    backup_b.sync()
    backup_a.sync()
    assert [r["case_id"] for r in read_corrections(a.folder)[0]] == ["1", "2"]
    assert read_corrections(a.folder)[0] == read_corrections(b.folder)[0] == read_corrections(tmp_path / "remote")[0]


def test_a_save_waits_for_the_restore_and_says_so(tmp_path, monkeypatch):
    from skinnet.corrections import storage

    monkeypatch.setattr(storage, "WAIT_FOR_RESTORE_S", 0.5)

    class Unreachable(FolderHub):
        def create_repo(self, *args, **kwargs):
            raise ConnectionError("no network")

    log = CorrectionsLog(tmp_path / "disk")
    backup = Backup(log, Unreachable(tmp_path / "remote"), "o/r").start()
    with pytest.raises(CorrectionsError, match="still being restored from its backup after a restart. Nothing was"):
        log.append(review())
    assert not log.path.exists()
    backup._stop.set()
    assert "restoring the review log" in backup.status.sentence()


@pytest.mark.timeout(900)
def test_a_restart_with_an_empty_disk_comes_back_with_every_backed_up_review(tmp_path):
    """The Space's story: reviews saved, the app stopped (SIGTERM: the last push), the disk gone;
    the restarted app has every review back before its first save, the Queue tab says when it
    backed up, and the backup's first log is never rewritten."""
    checkpoint = tiny_checkpoint(tmp_path)
    write_manifest(tmp_path / "queues" / "clinic")
    env = {"SKINNET_QUEUE_ROOT": str(tmp_path / "queues"), "SKINNET_BACKUP": f"file:{tmp_path / 'remote'}"}
    first = App(checkpoint, tmp_path / "disk", env=env)
    try:
        client = RawClient(first.url, USER, PASSWORD)
        config = client.config()
        session = secrets.token_hex(6)
        token = open_first_case(client, config, session).data[-1]
        saved = client.call(fns(config, "save")[0], save_data(token, "agree", note="c0 before the restart"), session)
        assert saved.success, saved.error
        assert client.call(fns(config, "step_next")[0], [None], session).success
        _, token = case_shown(client, config, session)
        saved = client.call(fns(config, "save")[0], save_data(token, "unsure", note="c1 before"), session)
        assert saved.success, saved.error
        status = client.call(fns(config, "backup_status")[0], [], session)
        assert "restored 0 files" in status.data[0] and "not pushed yet" in status.data[0]
    finally:
        first.stop()  # SIGTERM, as a Space stops its container
    remote_rows, problems = read_corrections(tmp_path / "remote")
    assert problems == [] and [r["note"] for r in remote_rows] == ["c0 before the restart", "c1 before"]
    first_shard = {p.name: p.read_bytes() for p in (tmp_path / "remote" / "shards").iterdir()}
    assert len(first_shard) == 1 and len(list((tmp_path / "remote" / "images").iterdir())) == 4

    shutil.rmtree(tmp_path / "disk")  # the restart comes with an empty disk
    second = App(checkpoint, tmp_path / "disk", env=env)
    try:
        client = RawClient(second.url, USER, PASSWORD)
        session = secrets.token_hex(6)
        shown = open_first_case(client, config, session)  # c0: the saved review is back in the form
        assert "your review: **agree**" in shown.data[3] and "c0 before the restart" in shown.data
        assert client.call(fns(config, "step_next")[0], [None], session).success
        assert client.call(fns(config, "step_next")[0], [None], session).success
        _, token = case_shown(client, config, session)
        saved = client.call(fns(config, "save")[0], save_data(token, "skip", note="c2 after"), session)
        assert saved.success and "Saved: skip for case c2" in saved.data[0]
        status = client.call(fns(config, "backup_status")[0], [], session).data[0]
        assert "restored 5 files" in status  # one shard, four images
    finally:
        second.stop()
    rows, problems = read_corrections(tmp_path / "remote")
    assert problems == [] and [r["note"] for r in rows] == ["c0 before the restart", "c1 before", "c2 after"]
    shards = {p.name: p.read_bytes() for p in (tmp_path / "remote" / "shards").iterdir()}
    assert len(shards) == 2 and all(shards[name] == data for name, data in first_shard.items())
