"""Build the CLIP BPE tokenizer files shipped in webui/engine/tokenizers/.

The source is OpenAI's byte-pair vocabulary `bpe_simple_vocab_16e6.txt.gz` (MIT licence), which the
open_clip_torch, clip-anytorch and openai-clip packages all carry byte for byte. Fetch it with
`pip download --no-deps open_clip_torch` and unzip `open_clip/bpe_simple_vocab_16e6.txt.gz`.

    python tools/make_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz

Writes one folder, `clip`, that `transformers.CLIPTokenizer.from_pretrained` reads offline. It pads with
<|endoftext|> as SD1 does; the loader passes pad_token="!" (id 0) for OpenCLIP encoders (SD2, SDXL's second).
"""
import argparse
import gzip
import json
from pathlib import Path

VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
OUT = Path(__file__).resolve().parent.parent / "webui" / "engine" / "tokenizers"


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP uses for raw bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build(gz_path: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(gz_path, "rt", encoding="utf-8").read().split("\n")
    n_merges = VOCAB_SIZE - 256 - 256 - 2
    merges = lines[1 : 1 + n_merges]
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


def write_folder(folder: Path, vocab: dict[str, int], merges: list[str], pad_token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1), encoding="utf-8")
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bpe_gz", type=Path)
    args = parser.parse_args()
    vocab, merges = build(args.bpe_gz)
    write_folder(OUT / "clip", vocab, merges, pad_token=EOS)
    print(f"wrote {OUT}/clip ({len(vocab)} tokens)")


if __name__ == "__main__":
    main()
