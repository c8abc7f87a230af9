"""Prompt text → the tensors the UNet is conditioned on.

A prompt is parsed into weighted segments (`prompt_parser`), tokenized whole and cut into chunks of 75
tokens; each chunk is encoded with its own start and end tokens and the chunks are concatenated, so nothing
is silently truncated. `BREAK` starts a new chunk; a full chunk whose last comma is near its end moves the
words after that comma to the next chunk (A1111's "comma padding backtrack"). Textual-inversion names are
matched by token sequence and their vectors replace those tokens' embeddings, never split across chunks.

Emphasis (setting "Emphasis mode", as A1111): "Original" scales each token's output by its weight, then
rescales the chunk to keep its original mean; "No norm" only scales; "Ignore" parses but does not scale;
"None" does not parse brackets at all.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import CLIPTokenizer

from .prompt_parser import DEFAULT_EMPHASIS, EMPHASIS_MODES, segments_for_mode

if TYPE_CHECKING:
    from .embeddings import Embedding, EmbeddingSet

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizers" / "clip"
CHUNK_TOKENS = 75
BOS_ID, EOS_ID = 49406, 49407
EMBEDDING_PLACEHOLDER_ID = 0   # overwritten by the embedding's vectors before the transformer sees it


@dataclass
class Conditioning:
    context: torch.Tensor              # [batch, tokens, width]
    pooled: torch.Tensor | None = None  # [batch, width] (SDXL)

    def to(self, device, dtype) -> "Conditioning":
        pooled = self.pooled.to(device, dtype) if self.pooled is not None else None
        return Conditioning(self.context.to(device, dtype), pooled)


@dataclass
class PromptOptions:
    """The text-encoding settings (A1111 names in comments)."""
    emphasis: str = DEFAULT_EMPHASIS        # emphasis
    comma_padding_backtrack: int = 20        # comma_padding_backtrack (0 turns it off)
    sdxl_clip_l_skip: bool = False           # sdxl_clip_l_skip: let Clip skip reach SDXL's CLIP-L tower
    pad_conds: bool = False                  # pad_cond_uncond: pad cond/uncond to one length, one UNet pass

    def __post_init__(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"unknown emphasis mode {self.emphasis!r}; valid: {', '.join(EMPHASIS_MODES)}")


def load_tokenizer(pad_with_zero: bool) -> CLIPTokenizer:
    """OpenCLIP pads with id 0 ('!'); OpenAI CLIP pads with <|endoftext|>."""
    if pad_with_zero:
        return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token="!")
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


# -------------------------------------------------------------------------------------------- tokenizing

@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)     # at most 75 ids, without start/end tokens
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, "Embedding"]] = field(default_factory=list)   # (offset in tokens, embedding)


@dataclass
class TokenizedPrompt:
    chunks: list[PromptChunk]
    embeddings: list["Embedding"] = field(default_factory=list)   # used, in order of first use

    def padded(self, min_chunks: int) -> list[PromptChunk]:
        return self.chunks + [PromptChunk() for _ in range(min_chunks - len(self.chunks))]


class _Chunker:
    """A1111's `tokenize_line`: fills 75-token chunks, closing a full chunk only when more tokens come."""

    def __init__(self, backtrack: int, comma_id: int | None):
        self.backtrack, self.comma_id = backtrack, comma_id
        self.chunks: list[PromptChunk] = []
        self.chunk = PromptChunk()
        self.last_comma = -1

    def next_chunk(self) -> None:
        self.chunks.append(self.chunk)
        self.chunk = PromptChunk()
        self.last_comma = -1

    def add_token(self, token: int, weight: float) -> None:
        c = self.chunk
        if token == self.comma_id:
            self.last_comma = len(c.tokens)
        elif (self.backtrack and len(c.tokens) == CHUNK_TOKENS and self.last_comma != -1
              and len(c.tokens) - self.last_comma <= self.backtrack):
            self._move_after_comma()
        if len(self.chunk.tokens) == CHUNK_TOKENS:
            self.next_chunk()
        self.chunk.tokens.append(token)
        self.chunk.weights.append(weight)

    def _move_after_comma(self) -> None:
        c, cut = self.chunk, self.last_comma + 1
        moved = PromptChunk(c.tokens[cut:], c.weights[cut:], [(o - cut, e) for o, e in c.fixes if o >= cut])
        c.tokens, c.weights, c.fixes = c.tokens[:cut], c.weights[:cut], [(o, e) for o, e in c.fixes if o < cut]
        self.next_chunk()
        self.chunk = moved

    def add_embedding(self, emb: "Embedding", count: int, weight: float) -> None:
        if len(self.chunk.tokens) + count > CHUNK_TOKENS:
            self.next_chunk()
        self.chunk.fixes.append((len(self.chunk.tokens), emb))
        self.chunk.tokens += [EMBEDDING_PLACEHOLDER_ID] * count
        self.chunk.weights += [weight] * count

    def finish(self) -> list[PromptChunk]:
        if self.chunk.tokens or not self.chunks:
            self.next_chunk()
        return self.chunks


def tokenize_segments(tokenizer: CLIPTokenizer, segments: Iterable[tuple[str, float]],
                      embeddings: "EmbeddingSet | None" = None, backtrack: int = 20) -> TokenizedPrompt:
    comma_id = tokenizer.convert_tokens_to_ids(",</w>")
    chunker = _Chunker(backtrack, comma_id)
    used: list = []
    for text, weight in segments:
        if text == "BREAK" and weight == -1:
            chunker.next_chunk()
            continue
        ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids if text else []
        pos = 0
        while pos < len(ids):
            emb, length = embeddings.find_at(tokenizer, ids, pos) if embeddings is not None else (None, 0)
            if emb is None:
                chunker.add_token(ids[pos], weight)
                pos += 1
                continue
            chunker.add_embedding(emb, min(emb.num_vectors, CHUNK_TOKENS), weight)
            if emb not in used:
                used.append(emb)
            pos += length
    return TokenizedPrompt(chunker.finish(), used)


def chunk_ids(chunk: PromptChunk, pad_id: int) -> tuple[list[int], list[float]]:
    """77 ids framed as start + 75 + end, padded with end tokens; after the first end token, `pad_id`."""
    fill = CHUNK_TOKENS - len(chunk.tokens)
    ids = [BOS_ID] + chunk.tokens + [EOS_ID] + [pad_id] * fill
    return ids, [1.0] + chunk.weights + [1.0] * (fill + 1)


# -------------------------------------------------------------------------------------------- encoding

class TextEncoder:
    """One CLIP-family text tower with its tokenizer and the layer rule its family conditions on."""

    def __init__(self, kind: str, model: torch.nn.Module, tokenizer: CLIPTokenizer, family_base: str):
        self.kind = kind
        self.model = model
        self.tokenizer = tokenizer
        self.family_base = family_base
        self.pad_id = 0 if kind.startswith("open_clip") else EOS_ID

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def width(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    def hidden(self, input_ids: torch.Tensor, clip_skip: int,
               sdxl_clip_l_skip: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(input_ids=input_ids, output_hidden_states=True)
        pooled = getattr(out, "text_embeds", None)
        states = out.hidden_states
        skip = max(1, min(int(clip_skip), len(states) - 1))
        if self.family_base == "sdxl":
            # A1111: both towers use the penultimate layer without the final norm; Clip skip reaches only
            # the CLIP-L tower, and only with the setting "sdxl_clip_l_skip".
            if sdxl_clip_l_skip and self.kind == "clip_l":
                return states[-skip], pooled
            return states[-2], pooled
        if skip <= 1:
            return out.last_hidden_state, pooled
        final_norm = self.model.text_model.final_layer_norm if hasattr(self.model, "text_model") else self.model.final_layer_norm
        return final_norm(states[-skip]), pooled

    def _fix_rows(self, chunks: list[PromptChunk]) -> list[list[tuple[int, torch.Tensor]]]:
        rows = []
        for chunk in chunks:
            fixes = []
            for offset, emb in chunk.fixes:
                vectors = emb.vectors_for(self.kind, self.width)
                if vectors is None:
                    raise ValueError(f"embedding {emb.name!r} has no vectors for the {self.kind} text encoder")
                fixes.append((offset, vectors[:CHUNK_TOKENS - offset]))
            rows.append(fixes)
        return rows

    @torch.no_grad()
    def encode_chunks(self, chunks: list[PromptChunk], clip_skip: int,
                      options: PromptOptions | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns context [1, 77·n, width] and the pooled embedding of the first chunk (or None)."""
        options = options or PromptOptions()
        framed = [chunk_ids(c, self.pad_id) for c in chunks]
        ids = torch.tensor([f[0] for f in framed], device=self.device)
        rows = self._fix_rows(chunks)
        with _InjectVectors(self.model.get_input_embeddings(), rows):
            z, pooled = self.hidden(ids, clip_skip, options.sdxl_clip_l_skip)
        weights = torch.tensor([f[1] for f in framed], device=z.device, dtype=z.dtype)
        if (weights != 1).any() and options.emphasis in ("Original", "No norm"):
            original_mean = z.mean(dim=(1, 2), keepdim=True)
            z = z * weights.unsqueeze(-1)
            if options.emphasis == "Original":
                # Per chunk, as A1111: restore the chunk's mean after scaling the tokens.
                z = z * (original_mean / z.mean(dim=(1, 2), keepdim=True))
        pooled = pooled[:1] if pooled is not None else None
        return z.reshape(1, -1, z.shape[-1]), pooled


class _InjectVectors:
    """Temporarily replaces token embeddings at given (row, offset) with embedding vectors.

    The vectors go in where the token embedding is looked up, before position embeddings are added and
    before the transformer, exactly where A1111's EmbeddingsWithFixes puts them.
    """

    def __init__(self, token_embedding: torch.nn.Module, rows: list[list[tuple[int, torch.Tensor]]]):
        self.module, self.rows, self.handle = token_embedding, rows, None

    def _hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, fixes in enumerate(self.rows):
            for offset, vectors in fixes:
                start = 1 + offset   # after the start token
                output[row, start:start + vectors.shape[0]] = vectors.to(output.device, output.dtype)
        return output

    def __enter__(self) -> "_InjectVectors":
        if any(self.rows):
            self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()


class PromptEncoder:
    """Encodes prompts for one model: all of its text towers, concatenated along the feature axis.

    Tokenization is done once (with the first tower's tokenizer; all CLIP towers share the vocabulary), so
    every tower sees the same chunks and the contexts line up.
    """

    def __init__(self, encoders: list[TextEncoder]):
        self.encoders = encoders

    def tokenize_text(self, text: str, options: PromptOptions | None = None,
                      embeddings: "EmbeddingSet | None" = None) -> TokenizedPrompt:
        options = options or PromptOptions()
        return self.tokenize_segments(segments_for_mode(text, options.emphasis), options, embeddings)

    def tokenize_segments(self, segments: list[tuple[str, float]], options: PromptOptions | None = None,
                          embeddings: "EmbeddingSet | None" = None) -> TokenizedPrompt:
        options = options or PromptOptions()
        return tokenize_segments(self.encoders[0].tokenizer, segments, embeddings, options.comma_padding_backtrack)

    def encode_tokens(self, tokens: TokenizedPrompt, clip_skip: int = 1, options: PromptOptions | None = None,
                      min_chunks: int = 1) -> Conditioning:
        chunks = tokens.padded(min_chunks)
        contexts, pooled = [], None
        for enc in self.encoders:
            z, p = enc.encode_chunks(chunks, clip_skip, options)
            contexts.append(z)
            pooled = p if p is not None else pooled
        return Conditioning(torch.cat(contexts, dim=-1), pooled)

    def encode_text(self, text: str, clip_skip: int = 1, options: PromptOptions | None = None,
                    embeddings: "EmbeddingSet | None" = None, min_chunks: int = 1) -> Conditioning:
        """Prompt text with A1111 emphasis syntax and BREAK (no scheduling, AND or network tags here)."""
        return self.encode_tokens(self.tokenize_text(text, options, embeddings), clip_skip, options, min_chunks)

    # Segment-level API: [(text, weight)] already parsed.
    def chunk_count(self, segments: list[tuple[str, float]], options: PromptOptions | None = None) -> int:
        return len(self.tokenize_segments(segments, options).chunks)

    def encode(self, segments: list[tuple[str, float]], clip_skip: int = 1, min_chunks: int = 1,
               options: PromptOptions | None = None) -> Conditioning:
        return self.encode_tokens(self.tokenize_segments(segments, options), clip_skip, options, min_chunks)

    def encode_pair(self, positive: list[tuple[str, float]], negative: list[tuple[str, float]],
                    clip_skip: int = 1) -> tuple[Conditioning, Conditioning]:
        """Both prompts padded to the same number of chunks, so they can share one UNet batch."""
        n = max(self.chunk_count(positive), self.chunk_count(negative))
        return self.encode(positive, clip_skip, n), self.encode(negative, clip_skip, n)
