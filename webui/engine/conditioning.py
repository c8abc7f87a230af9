"""Prompt text → the tensors the UNet is conditioned on.

A prompt is tokenized whole and cut into chunks of 75 tokens; each chunk is encoded with its own start
and end tokens and the chunks are concatenated, so nothing is silently truncated. Token weights (from the
prompt parser) scale each token's embedding, after which the chunk is rescaled to keep its original mean,
as A1111 does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizers" / "clip"
CHUNK_TOKENS = 75
BOS_ID, EOS_ID = 49406, 49407


@dataclass
class Conditioning:
    context: torch.Tensor              # [batch, tokens, width]
    pooled: torch.Tensor | None = None  # [batch, width] (SDXL)

    def to(self, device, dtype) -> "Conditioning":
        pooled = self.pooled.to(device, dtype) if self.pooled is not None else None
        return Conditioning(self.context.to(device, dtype), pooled)


def load_tokenizer(pad_with_zero: bool) -> CLIPTokenizer:
    """OpenCLIP pads with id 0 ('!'); OpenAI CLIP pads with <|endoftext|>."""
    if pad_with_zero:
        return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token="!")
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


@dataclass
class TokenChunk:
    ids: list[int]        # 77 ids: BOS, 75 tokens or padding, EOS/padding
    weights: list[float]  # 77 multipliers


def chunk_tokens(ids: list[int], weights: list[float], pad_id: int) -> list[TokenChunk]:
    """Split into 75-token chunks, each framed as BOS + 75 + EOS; after the first EOS, pad with `pad_id`."""
    chunks = []
    for start in range(0, max(len(ids), 1), CHUNK_TOKENS):
        body, body_w = ids[start:start + CHUNK_TOKENS], weights[start:start + CHUNK_TOKENS]
        fill = CHUNK_TOKENS - len(body)
        chunk_ids = [BOS_ID] + body + [EOS_ID] + [pad_id] * fill
        chunks.append(TokenChunk(chunk_ids, [1.0] + body_w + [1.0] * (fill + 1)))
    return chunks


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

    def tokenize(self, segments: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
        ids, weights = [], []
        for text, weight in segments:
            seg_ids = self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids if text else []
            ids += seg_ids
            weights += [weight] * len(seg_ids)
        return ids, weights

    def hidden(self, input_ids: torch.Tensor, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(input_ids=input_ids, output_hidden_states=True)
        pooled = getattr(out, "text_embeds", None)
        if self.family_base == "sdxl":
            # SDXL conditions on the penultimate layer of both towers, with no final layer norm.
            return out.hidden_states[-2], pooled
        if clip_skip <= 1:
            return out.last_hidden_state, pooled
        final_norm = self.model.text_model.final_layer_norm if hasattr(self.model, "text_model") else self.model.final_layer_norm
        return final_norm(out.hidden_states[-clip_skip]), pooled

    @torch.no_grad()
    def encode_chunks(self, chunks: list[TokenChunk], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns context [1, 77·n, width] and the pooled embedding of the first chunk (or None)."""
        ids = torch.tensor([c.ids for c in chunks], device=self.device)
        z, pooled = self.hidden(ids, clip_skip)
        weights = torch.tensor([c.weights for c in chunks], device=z.device, dtype=z.dtype)
        if (weights != 1).any():
            # Per chunk, as A1111: scale each token, then restore the chunk's original mean.
            original_mean = z.mean(dim=(1, 2), keepdim=True)
            z = z * weights.unsqueeze(-1)
            z = z * (original_mean / z.mean(dim=(1, 2), keepdim=True))
        pooled = pooled[:1] if pooled is not None else None
        return z.reshape(1, -1, z.shape[-1]), pooled


class PromptEncoder:
    """Encodes prompts for one model: all of its text towers, concatenated along the feature axis."""

    def __init__(self, encoders: list[TextEncoder]):
        self.encoders = encoders

    def chunk_count(self, segments: list[tuple[str, float]]) -> int:
        ids, _ = self.encoders[0].tokenize(segments)
        return max(1, -(-len(ids) // CHUNK_TOKENS))

    def encode(self, segments: list[tuple[str, float]], clip_skip: int = 1, min_chunks: int = 1) -> Conditioning:
        contexts, pooled = [], None
        for enc in self.encoders:
            ids, weights = enc.tokenize(segments)
            chunks = chunk_tokens(ids, weights, enc.pad_id)
            while len(chunks) < min_chunks:
                chunks += chunk_tokens([], [], enc.pad_id)
            z, p = enc.encode_chunks(chunks, clip_skip)
            contexts.append(z)
            pooled = p if p is not None else pooled
        return Conditioning(torch.cat(contexts, dim=-1), pooled)

    def encode_pair(self, positive: list[tuple[str, float]], negative: list[tuple[str, float]],
                    clip_skip: int = 1) -> tuple[Conditioning, Conditioning]:
        """Both prompts padded to the same number of chunks, so they can share one UNet batch."""
        n = max(self.chunk_count(positive), self.chunk_count(negative))
        return self.encode(positive, clip_skip, n), self.encode(negative, clip_skip, n)
