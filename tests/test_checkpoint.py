"""Pretrained checkpoints (lorasec.models.checkpoint): converted weights are cached under their files' content."""


def test_converted_weights_are_keyed_by_content(tmp_path):
    from lorasec.models.checkpoint import content_key

    first = tmp_path / "a"
    first.mkdir()
    for name, text in (("config.json", "{}"), ("model.safetensors", "weights"), ("tokenizer.json", "{}")):
        (first / name).write_text(text)
    copy = tmp_path / "elsewhere" / "b"
    copy.parent.mkdir()
    import shutil

    shutil.copytree(first, copy)
    assert content_key(first) == content_key(copy)
    (copy / "model.safetensors").write_text("other weights")
    assert content_key(first) != content_key(copy)
