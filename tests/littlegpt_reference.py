"""Test-only PyTorch reference of Little-GPT's GPT2 (original-project.md §8.1), written from the description, in
Little-GPT's module / state-dict naming: `wte` (Embedding, or StableEmbedding with `wte.norm` for the 1B*
models), optional `wpe`, `blocks[i]` with `ln1`, `ln2` (sequential only), `attn` (`query`, `key`, `value`,
`fc_resid`, buffers `slopes` and `mask`), `mlp` (`fc1`, exact GELU, `fc_resid`), final `norm`, tied `lm_head`.

`forward(x, use_cache=False, past_states=None)` returns logits, or `(logits, presents)` with `use_cache`;
`presents[i] = (k, v)` of shape [B, H, T_total, D/H], fed back as `past_states` (ALiBi uses the last bias row
for a cached single query, as in Little-GPT). Imported only by tests that have torch.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def get_slopes(n):
  def pow2(k):
    start = 2 ** (-(2 ** -(math.log2(k) - 3)))
    return [start * start**i for i in range(k)]

  if math.log2(n).is_integer():
    return pow2(n)
  c = 2 ** math.floor(math.log2(n))
  return pow2(c) + get_slopes(2 * c)[0::2][: n - c]


class StableEmbedding(nn.Embedding):
  """bitsandbytes' StableEmbedding as far as the weights go: an embedding followed by a LayerNorm `norm`."""

  def __init__(self, num_embeddings, embedding_dim):
    super().__init__(num_embeddings, embedding_dim)
    self.norm = nn.LayerNorm(embedding_dim)

  def forward(self, x):
    return self.norm(super().forward(x))


class ALiBi(nn.Module):
  def __init__(self, embedding_dim, num_head, num_ctx, dropout=0.0, use_alibi=True):
    super().__init__()
    self.num_head, self.use_alibi = num_head, use_alibi
    self.key = nn.Linear(embedding_dim, embedding_dim)
    self.query = nn.Linear(embedding_dim, embedding_dim)
    self.value = nn.Linear(embedding_dim, embedding_dim)
    self.fc_resid = nn.Linear(embedding_dim, embedding_dim)
    self.resid_drop = nn.Dropout(dropout)
    if use_alibi:
      self.register_buffer("slopes", torch.tensor(get_slopes(num_head), dtype=torch.float32))
    self.register_buffer(
      "mask", torch.tril(torch.ones(num_ctx, num_ctx, dtype=torch.uint8)).view(1, 1, num_ctx, num_ctx)
    )

  def forward(self, x, use_cache=False, layer_past=None):
    b, t, c = x.size()
    hd = c // self.num_head
    split = lambda y: y.view(b, t, self.num_head, hd).transpose(1, 2)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    if layer_past is not None:
      k = torch.cat((layer_past[0], k), dim=-2)
      v = torch.cat((layer_past[1], v), dim=-2)
    present = (k, v) if use_cache else None
    tk = k.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
    if self.use_alibi:
      pos = torch.arange(tk, device=x.device)
      rel = (pos[None, :] - pos[:, None]).to(att.dtype)  # j - i: -(i - j)
      bias = self.slopes[:, None, None].to(att.dtype) * rel[None]
      att = att + bias[:, tk - t :, :].unsqueeze(0)  # the last t rows (one row for a cached query)
    mask = (
      self.mask[:, :, tk - t : tk, :tk]
      if tk <= self.mask.size(-1)
      else torch.tril(torch.ones(tk, tk, dtype=torch.uint8, device=x.device))[None, None, tk - t :]
    )
    att = att.masked_fill(mask == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
    return self.resid_drop(self.fc_resid(y)), present


class MLPBlock(nn.Module):
  def __init__(self, dim, dim_ff, dropout=0.0):
    super().__init__()
    self.fc1 = nn.Linear(dim, dim_ff)
    self.gelu = nn.GELU()
    self.fc_resid = nn.Linear(dim_ff, dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x):
    return self.dropout(self.fc_resid(self.gelu(self.fc1(x))))


class GPT2Block(nn.Module):
  def __init__(self, embedding_dim, num_head, num_ctx, fused_residuals=True, use_alibi=True):
    super().__init__()
    self.fused_residuals = fused_residuals
    self.ln1 = nn.LayerNorm(embedding_dim)
    if not fused_residuals:
      self.ln2 = nn.LayerNorm(embedding_dim)
    self.attn = ALiBi(embedding_dim, num_head, num_ctx, use_alibi=use_alibi)
    self.mlp = MLPBlock(embedding_dim, 4 * embedding_dim)

  def forward(self, x, use_cache=False, layer_past=None):
    if self.fused_residuals:
      h = self.ln1(x)
      attn_out, present = self.attn(h, use_cache, layer_past)
      return x + self.mlp(h) + attn_out, present
    attn_out, present = self.attn(self.ln1(x), use_cache, layer_past)
    x = x + attn_out
    return x + self.mlp(self.ln2(x)), present


class GPT2(nn.Module):
  def __init__(
    self,
    num_ctx,
    embedding_dim,
    N,
    vocab_size,
    num_head=8,
    fused_residuals=True,
    use_alibi=True,
    use_stable_embedding=False,
  ):
    super().__init__()
    self.num_ctx, self.N, self.use_alibi = num_ctx, N, use_alibi
    self.wte = (
      StableEmbedding(vocab_size, embedding_dim) if use_stable_embedding else nn.Embedding(vocab_size, embedding_dim)
    )
    if not use_alibi:
      self.wpe = nn.Embedding(num_ctx, embedding_dim)
    self.dropout = nn.Dropout(0.0)
    self.blocks = nn.ModuleList(
      [GPT2Block(embedding_dim, num_head, num_ctx, fused_residuals, use_alibi) for _ in range(N)]
    )
    self.norm = nn.LayerNorm(embedding_dim)
    self.lm_head = nn.Linear(embedding_dim, vocab_size, bias=False)
    self.lm_head.weight = self.wte.weight
    self.apply(self._init_weights)
    for name, p in self.named_parameters():
      if "fc_resid" in name and "weight" in name:
        p.data.normal_(mean=0.0, std=0.02 / math.sqrt(2 * N))

  @staticmethod
  def _init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
      module.weight.data.normal_(mean=0.0, std=0.02)
      if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
      module.bias.data.zero_()
      module.weight.data.fill_(1.0)

  def forward(self, x, use_cache=False, past_states=None):
    b, t = x.size()
    h = self.wte(x)
    if not self.use_alibi:
      past = 0 if past_states is None else past_states[0][0].size(-2)
      h = h + self.wpe(torch.arange(past, past + t, device=x.device))[None]
    h = self.dropout(h)
    presents = []
    for i, block in enumerate(self.blocks):
      h, present = block(h, use_cache, None if past_states is None else past_states[i])
      presents.append(present)
    logits = self.lm_head(self.norm(h))
    return (logits, presents) if use_cache else logits
