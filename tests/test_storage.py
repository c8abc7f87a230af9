import datetime
import os
import threading

import pytest
from PIL import Image

from webui import atomic_files
from webui.atomic_files import atomic_output, atomic_write_bytes, atomic_write_text, publish_exclusive
from webui.engine.infotext import parse_infotext, read_image_infotext
from webui.services import storage
from webui.services.storage import OutputStorage, next_sequence_number

DAY = datetime.date(2024, 5, 17)
INFO = "a fox, snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1234, Size: 16x8"


def image(color=(10, 200, 30)):
    return Image.new("RGB", (16, 8), color)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_layout_and_infotext_round_trip(tmp_path):
    store = OutputStorage(tmp_path / "outputs")
    path = store.save(image(), "txt2img", 1234, INFO, date=DAY)
    assert path == tmp_path / "outputs" / "txt2img-images" / "2024-05-17" / "00000-1234.png"
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        assert loaded.size == (16, 8) and loaded.getpixel((0, 0)) == (10, 200, 30)
        assert read_image_infotext(loaded) == INFO
        assert parse_infotext(read_image_infotext(loaded))["Seed"] == "1234"
    assert leftovers(path.parent) == []


def test_counter_increments(tmp_path):
    store = OutputStorage(tmp_path)
    names = [store.save(image(), "img2img", seed, None, date=DAY).name for seed in (5, 5, 6)]
    assert names == ["00000-5.png", "00001-5.png", "00002-6.png"]


def test_counter_continues_after_highest_existing_with_gaps(tmp_path):
    folder = tmp_path / "txt2img-images" / DAY.isoformat()
    folder.mkdir(parents=True)
    for name in ("00000-1.png", "00003-9.png", "00017-2.jpg", "notes.txt", "grid-0001.png", ".00099-hidden.png"):
        (folder / name).write_bytes(b"existing")
    assert next_sequence_number(folder) == 18
    path = OutputStorage(tmp_path).save(image(), "txt2img", 3, INFO, date=DAY)
    assert path.name == "00018-3.png"
    assert all((folder / n).read_bytes() == b"existing" for n in ("00000-1.png", "00003-9.png", "00017-2.jpg"))


def test_never_overwrites_a_name_taken_meanwhile(tmp_path, monkeypatch):
    """Another process creates our chosen name between the scan and the publish: we move on."""
    folder = tmp_path / "txt2img-images" / DAY.isoformat()
    folder.mkdir(parents=True)
    real_next = storage.next_sequence_number
    calls = []

    def racing_next(f):
        n = real_next(f)
        if not calls:
            (f / f"{n:05}-7.png").write_bytes(b"other process")
        calls.append(n)
        return n

    monkeypatch.setattr(storage, "next_sequence_number", racing_next)
    path = OutputStorage(tmp_path).save(image(), "txt2img", 7, None, date=DAY)
    assert path.name == "00001-7.png"
    assert (folder / "00000-7.png").read_bytes() == b"other process"


def test_concurrent_saves_produce_distinct_files(tmp_path):
    store = OutputStorage(tmp_path)
    paths: list = []
    errors: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(i):
        try:
            barrier.wait()
            for j in range(3):
                p = store.save(image((i * 30, j * 80, 5)), "txt2img", 100 + i, f"img {i} {j}", date=DAY)
                with lock:
                    paths.append((p, i, j))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({p for p, _, _ in paths}) == 24
    numbers = sorted(int(p.name.split("-")[0]) for p, _, _ in paths)
    assert numbers == list(range(24))
    for p, i, j in paths:  # each file holds its own image, none clobbered
        with Image.open(p) as loaded:
            assert p.name.endswith(f"-{100 + i}.png")
            assert loaded.getpixel((0, 0)) == (i * 30, j * 80, 5)
            assert read_image_infotext(loaded) == f"img {i} {j}"
    assert leftovers(paths[0][0].parent) == []


def test_failure_during_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(img, path, infotext, format=None, **kw):
        with open(path, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(storage, "save_image_with_infotext", broken_save)
    store = OutputStorage(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        store.save(image(), "txt2img", 1, INFO, date=DAY)
    folder = store.folder("txt2img", DAY)
    assert list(folder.iterdir()) == []


def test_failure_during_publish_leaves_nothing(tmp_path, monkeypatch):
    def broken_link(src, dst):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(atomic_files.os, "link", broken_link)
    store = OutputStorage(tmp_path)
    with pytest.raises(OSError, match="I/O error"):
        store.save(image(), "txt2img", 1, INFO, date=DAY)
    assert list(store.folder("txt2img", DAY).iterdir()) == []


def test_no_hardlink_filesystem_fallback(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic_files.os, "link", no_link)
    store = OutputStorage(tmp_path)
    a = store.save(image(), "txt2img", 1, INFO, date=DAY)
    b = store.save(image(), "txt2img", 1, INFO, date=DAY)
    assert (a.name, b.name) == ("00000-1.png", "00001-1.png")
    assert read_image_infotext(Image.open(b)) == INFO
    assert leftovers(a.parent) == []


@pytest.mark.parametrize("ext, fmt", [("jpg", "JPEG"), ("webp", "WEBP"), (".PNG", "PNG")])
def test_other_formats_carry_infotext(tmp_path, ext, fmt):
    path = OutputStorage(tmp_path).save(Image.new("RGBA", (8, 8), (1, 2, 3, 255)), "extras", 9, INFO,
                                        date=DAY, extension=ext)
    assert path.suffix == "." + ext.lower().lstrip(".")
    with Image.open(path) as loaded:
        assert loaded.format == fmt
        assert read_image_infotext(loaded) == INFO


def test_rejects_bad_kind_and_extension(tmp_path):
    store = OutputStorage(tmp_path)
    with pytest.raises(ValueError):
        store.save(image(), "../escape", 1, None, date=DAY)
    with pytest.raises(ValueError):
        store.save(image(), "txt2img", 1, None, date=DAY, extension="gif")


def test_default_date_is_today(tmp_path):
    path = OutputStorage(tmp_path).save(image(), "txt2img", 1, None)
    assert path.parent.name == datetime.date.today().isoformat()


# --- atomic_files helpers used by every layer


def test_atomic_write_text_and_bytes(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, '{"a": "ü"}')
    assert target.read_text(encoding="utf-8") == '{"a": "ü"}'
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert leftovers(tmp_path) == []


def test_atomic_output_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "cache.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".")
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_output_respects_umask(tmp_path):
    if os.name == "nt":
        pytest.skip("POSIX permissions")
    target = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        atomic_write_text(target, "x")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_publish_exclusive_refuses_existing(tmp_path):
    tmp = tmp_path / ".t.tmp"
    tmp.write_text("new")
    dest = tmp_path / "taken.txt"
    dest.write_text("old")
    with pytest.raises(FileExistsError):
        publish_exclusive(tmp, dest)
    assert dest.read_text() == "old" and tmp.exists()
    publish_exclusive(tmp, tmp_path / "free.txt")
    assert (tmp_path / "free.txt").read_text() == "new" and not tmp.exists()


def test_folder_override_from_settings(tmp_path):
    from PIL import Image

    storage = OutputStorage(tmp_path / "outputs")
    storage.folder_overrides["txt2img"] = tmp_path / "mine"
    saved = storage.save(Image.new("RGB", (8, 8)), "txt2img", seed=3, infotext="x")
    assert saved.parent.parent == tmp_path / "mine" and saved.name == "00000-3.png"
