"""Textual-inversion embeddings: file formats, matching by name, exact effect on the conditioning, infotext.

The reference for "exactly as its vectors dictate": a copy of the text encoder whose vocabulary rows for
a few rare tokens are overwritten with the embedding's vectors; encoding those token ids must give the same
conditioning as writing the embedding's name in the prompt.
"""
from __future__ import annotations

import argparse
import copy

import pytest
import torch
from safetensors.torch import save_file

from conftest import small_params
from webui.engine.conditioning import BOS_ID, CHUNK_TOKENS, EOS_ID, PromptOptions
from webui.engine.embeddings import EmbeddingLibrary, load_embedding
from webui.engine.engine import Engine
from webui.engine.hashing import sha256_file
from webui.engine.infotext import parse_infotext

RARE_IDS = [49000, 49001, 49002]   # vocabulary rows the reference encoder overwrites




@pytest.fixture(scope="module")
def sd1(tmp_path_factory, checkpoints) -> Engine:
    engine = checkpoints.engine("sd1", root=tmp_path_factory.mktemp("ti_sd1"))
    folder = engine.paths.embeddings_dirs[0]
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(3)
    save_file({"emb_params": torch.randn(2, 64, generator=g)}, str(folder / "shinystyle.safetensors"))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(3, 64, generator=g)},
                "name": "inner-name", "step": 1500}, folder / "fox-spirit.pt")
    save_file({"clip_l": torch.randn(1, 64, generator=g), "clip_g": torch.randn(1, 128, generator=g)},
              str(folder / "xlonly.safetensors"))
    torch.save({"string_to_param": {"*": torch.zeros(1, 64)}, "bad": argparse.Namespace(a=1)}, folder / "evil.pt")
    return engine


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory, checkpoints) -> Engine:
    engine = checkpoints.engine("sdxl", root=tmp_path_factory.mktemp("ti_sdxl"))
    folder = engine.paths.embeddings_dirs[0]
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(4)
    save_file({"clip_l": torch.randn(2, 64, generator=g), "clip_g": torch.randn(2, 128, generator=g)},
              str(folder / "xlstyle.safetensors"))
    return engine


def reference_context(model, words: list[str | torch.Tensor | dict], clip_skip: int = 1) -> torch.Tensor:
    """Encode one chunk where embeddings are written into spare vocabulary rows of copied text encoders."""
    contexts = []
    for enc in model.prompt_encoder.encoders:
        tower = copy.deepcopy(enc.model)
        table = tower.get_input_embeddings().weight
        ids, rare = [], iter(RARE_IDS)
        for word in words:
            if isinstance(word, str):
                ids += enc.tokenizer(word, add_special_tokens=False).input_ids
                continue
            vectors = word[enc.kind] if isinstance(word, dict) else word
            for vec in vectors:
                row = next(rare)
                with torch.no_grad():
                    table[row] = vec
                ids.append(row)
        framed = [BOS_ID] + ids + [EOS_ID] + [enc.pad_id] * (CHUNK_TOKENS - len(ids))
        z, _ = enc.__class__(enc.kind, tower, enc.tokenizer, enc.family_base).hidden(torch.tensor([framed]), clip_skip)
        contexts.append(z)
    return torch.cat(contexts, dim=-1)


def test_file_formats_and_names(sd1):
    folder = sd1.paths.embeddings_dirs[0]
    pt = load_embedding(folder / "fox-spirit.pt")
    assert pt.name == "fox-spirit" and pt.num_vectors == 3 and pt.step == 1500 and pt.shape == 64
    st = load_embedding(folder / "shinystyle.safetensors")
    assert st.num_vectors == 2 and st.vectors.shape == (2, 64)
    xl = load_embedding(folder / "xlonly.safetensors")
    assert xl.num_vectors == 1 and xl.shape == 64 + 128


def test_pickles_asking_for_more_than_tensors_are_refused(sd1):
    library = EmbeddingLibrary(sd1.paths.embeddings_dirs)
    names = library.all()
    assert "evil" not in names and "refused" in library.errors["evil"]


def test_listing_splits_by_model(sd1):
    listing = sd1.list_embeddings()
    assert set(listing.loaded) == {"shinystyle", "fox-spirit"}
    assert set(listing.skipped) == {"xlonly"}


def test_name_in_prompt_changes_conditioning_exactly_as_its_vectors(sd1):
    model = sd1.models.current
    embs = sd1.list_embeddings()
    encoder = model.prompt_encoder
    got = encoder.encode_text("a photo of shinystyle in a field", embeddings=embs).context
    vectors = embs.loaded["shinystyle"].vectors
    expected = reference_context(model, ["a photo of", vectors, "in a field"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Without the embedding set the name is ordinary text, and gives something else.
    plain = encoder.encode_text("a photo of shinystyle in a field").context
    assert not torch.allclose(plain, got, atol=1e-3)


def test_hyphenated_multi_vector_name_and_emphasis(sd1):
    model = sd1.models.current
    embs = sd1.list_embeddings()
    vectors = embs.loaded["fox-spirit"].vectors
    got = model.prompt_encoder.encode_text("fox-spirit", embeddings=embs, clip_skip=2).context
    torch.testing.assert_close(got, reference_context(model, [vectors], clip_skip=2), atol=1e-5, rtol=1e-5)
    # Emphasis weights the embedding's slots like any token: "No norm" multiplies them exactly.
    weighted = model.prompt_encoder.encode_text("(fox-spirit:1.5)", options=PromptOptions(emphasis="No norm"), embeddings=embs).context
    scale = torch.ones(77)
    scale[1:4] = 1.5
    torch.testing.assert_close(weighted, reference_context(model, [vectors]) * scale[None, :, None], atol=1e-5, rtol=1e-5)


def test_embedding_is_never_split_across_chunks(sd1):
    model = sd1.models.current
    embs = sd1.list_embeddings()
    tokens = model.prompt_encoder.tokenize_text("x " * 73 + "fox-spirit", PromptOptions(comma_padding_backtrack=0), embs)
    assert [len(c.tokens) for c in tokens.chunks] == [73, 3]
    assert tokens.chunks[1].fixes[0][0] == 0 and tokens.chunks[1].fixes[0][1].name == "fox-spirit"


def test_sdxl_embedding_feeds_each_tower_its_own_vectors(sdxl):
    model = sdxl.models.current
    embs = sdxl.list_embeddings()
    emb = embs.loaded["xlstyle"]
    got = model.prompt_encoder.encode_text("red xlstyle circle", embeddings=embs).context
    vectors = {"clip_l": emb.per_tower["clip_l"], "open_clip_g": emb.per_tower["clip_g"]}
    expected = reference_context(model, ["red", vectors, "circle"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ti_hashes_in_infotext(sd1):
    result = sd1.txt2img(small_params(prompt="shinystyle circle", negative_prompt="fox-spirit", steps=2,
                                      sampler_name="Euler"))
    folder = sd1.paths.embeddings_dirs[0]
    expected = (f"shinystyle: {sha256_file(folder / 'shinystyle.safetensors')[:12]}, "
                f"fox-spirit: {sha256_file(folder / 'fox-spirit.pt')[:12]}")
    assert parse_infotext(result.infotexts[0])["TI hashes"] == expected
    plain = sd1.txt2img(small_params(prompt="shinystyle circle", steps=2, sampler_name="Euler"))
    assert "fox-spirit" not in plain.infotexts[0]
