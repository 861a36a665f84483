"""The torch path's fixed-shape policy (CUDA's default): every GEMM and row reduction has one shape for any batch.

On CPU the tile path (model.py) is batch-invariant because a batched GEMM gives each of its matrices the same
bits whatever the batch count. cuBLAS promises no such thing: it picks a kernel (tile sizes, split-K) from
the whole call's shape, batch count included, and torch's CUDA reductions pick their thread layout from the
number of rows. So under this policy no call's shape may depend on the batch:

* rows are padded to a multiple of GROUP_ROWS (GROUP_TILES tiles of ROW_TILE rows) and every GEMM, RMSNorm
  and softcap is called on exactly one group of GROUP_ROWS rows at a time: one [G, 16, K] x [K, N] bmm
  shape per weight, one [GROUP_ROWS, H] reduction shape per norm;
* attention is cut into items, one (query tile, key block) pair each; the items of the whole step, every
  sequence's, are laid out in calls of exactly CALL_ITEMS items (padded with dummy items), so each score
  and value product is one [CALL_ITEMS * Hkv, QT*G, D] x [.., D, KEY_BLOCK] bmm and each per-block sum a
  [CALL_ITEMS, Hkv, QT, G, KEY_BLOCK] reduction, whatever the batch, chunking or context lengths. A
  sequence's KV length only decides how many items its tiles have (blocks 0 .. the tile's own), never a
  shape: an item's bits depend on its query tile and key block alone, and its place in a call does not
  matter (a batched GEMM's matrices and a reduction's rows all run the same code on their own data);
* what is left is exact or element-wise: the softmax maximum (a max is exact in any order), exp, the
  gathers, and the sum over a tile's blocks, a cumsum along an outer dimension, which torch computes as a
  sequential scan per element on CPU and CUDA alike (the prefix up to the tile's own block does not see
  the blocks after it, nor the row's neighbours).

Each product and reduction is the same torch call on the same per-matrix shape and layout as the tile path,
so on CPU this policy gives bit-identical results (tests/engine/test_fixed_shapes.py); that is what lets CI
test the code CUDA runs. On CUDA the bits differ from CPU's, but are a function of the row, the GPU model
and the torch/cuBLAS build alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import Segment

log = logging.getLogger("seedstream.engine")

GROUP_TILES = 4  # GEMM row tiles per call: 64 rows, so 32 decode streams and a draft row each fit one call
CALL_ITEMS = 128  # attention (query tile, key block) items per call: 32 streams of up to 512 positions
PASS_ITEMS = 1024  # items whose scores are held at once: bounds memory, changes no bits
POLICIES = ("auto", "tiles", "fixed")


def resolve_policy(name: str, device: torch.device) -> str:
    """`auto`: the fixed-shape policy on CUDA, the tile path (model.py) elsewhere."""
    if name not in POLICIES:
        raise ValueError(f"shape policy {name!r}: expected one of {POLICIES}")
    if name != "auto":
        return name
    return "fixed" if device.type == "cuda" else "tiles"


def policy_tag(group_tiles: int = GROUP_TILES, call_items: int = CALL_ITEMS) -> str:
    """engine_version's mark of the fixed-shape policy: its call shapes decide the bits on a GPU."""
    return f".fixed{group_tiles}x{call_items}"


def configure_cuda_determinism() -> dict[str, object]:
    """Turn off everything that lets CUDA matmuls change bits between calls or processes; return what was set.

    TF32 and the fp16/bf16 reduced-precision reductions let cuBLAS round inside a product in ways that
    depend on the kernel; the BLAS library is pinned (TORCH_BLAS_PREFER_CUBLASLT would switch it); the
    cuBLAS workspace size is fixed before the first handle exists, as cuBLAS asks for reproducible results.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    # the legacy switch, which torch >= 2.9 still honours; cuDNN's TF32 is left alone: no op here calls it, and
    # mixing its legacy and new switches makes reading either raise
    matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    if hasattr(matmul, "allow_fp16_accumulation"):  # torch >= 2.7
        matmul.allow_fp16_accumulation = False
    cudnn.benchmark, cudnn.deterministic = False, True  # cuDNN is not called today; kept fixed all the same
    torch.backends.cuda.preferred_blas_library("cublas")
    settings: dict[str, object] = {
        "matmul.allow_tf32": matmul.allow_tf32,
        "matmul.allow_fp16_reduced_precision_reduction": matmul.allow_fp16_reduced_precision_reduction,
        "matmul.allow_bf16_reduced_precision_reduction": matmul.allow_bf16_reduced_precision_reduction,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "blas": str(torch.backends.cuda.preferred_blas_library()),
        "CUBLAS_WORKSPACE_CONFIG": os.environ["CUBLAS_WORKSPACE_CONFIG"],
    }
    log.info("cuda determinism: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    return settings


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tile: int) -> torch.Tensor:
    """x: [M, K], M % (tile * GROUP_TILES) == 0 -> [M, N]: one [G, tile, K] x [K, N] bmm per group of rows.

    Each tile is one matrix of the bmm with the weight's transpose expanded, as invariant_linear (model.py)
    lays it out, so on CPU a row's bits are the same as there."""
    rows, k = x.shape
    n, group = weight.shape[0], tile * GROUP_TILES
    assert rows % group == 0, "pad rows to a multiple of tile * GROUP_TILES first"
    x, out = x.contiguous(), x.new_empty(rows, n)
    wt = weight.t().expand(GROUP_TILES, k, n)
    for lo in range(0, rows, group):
        torch.bmm(
            x[lo : lo + group].view(GROUP_TILES, tile, k), wt, out=out[lo : lo + group].view(GROUP_TILES, tile, n)
        )
    return out + bias if bias is not None else out


def per_group(x: torch.Tensor, rows: int, op: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """op applied to each group of `rows` rows of x (x.shape[0] % rows == 0): a row reduction of one shape."""
    if x.shape[0] == rows:
        return op(x)
    return torch.cat([op(x[lo : lo + rows]) for lo in range(0, x.shape[0], rows)])


# a query tile of a step: (segment index, segment, absolute tile, its step rows, the first row's position)
Tile = tuple[int, "Segment", int, list[int], int]


@dataclasses.dataclass
class AttentionPass:
    """Up to PASS_ITEMS items of whole query tiles, and the index tensors the fixed-shape calls read.

    Local tiles 0..tiles-1 hold the queries; tile `tiles` is all zeros (the dummy items' query)."""

    sources: list[tuple[Segment, int]]  # (segment, key blocks it lends) in the order their blocks are stacked
    tiles: int
    max_blocks: int  # the most items of one tile
    q_rows: torch.Tensor  # [Q] the step rows whose queries are here
    q_slots: torch.Tensor  # [Q] their row in the padded tiles: local tile * QT + position % QT
    item_tile: torch.Tensor  # [N] local tile of each item, N a multiple of CALL_ITEMS
    item_block: torch.Tensor  # [N] its key block in the stacked sources
    item_q0: torch.Tensor  # [N] its tile's first absolute position
    item_k0: torch.Tensor  # [N] its block's first absolute position
    rect: torch.Tensor  # [tiles * max_blocks] item of (tile, block), or N (a pad row) past the tile's own block
    own: torch.Tensor  # [tiles] each tile's own (last) block
    masks: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)  # window -> [N, 1, QT, 1, KB]


def plan_attention(segments: Sequence[Segment], qt: int, kb: int, device: torch.device) -> list[AttentionPass]:
    """Cut a step's queries into passes of whole tiles (no more than PASS_ITEMS items each, unless one
    tile alone has more). Built once per step; every layer reads it."""
    tiles: list[Tile] = []
    row = 0
    for s, seg in enumerate(segments):
        for t in range(seg.start // qt, (seg.start + seg.length - 1) // qt + 1):
            lo, hi = max(seg.start, t * qt), min(seg.start + seg.length, (t + 1) * qt)  # positions
            tiles.append((s, seg, t, list(range(row + lo - seg.start, row + hi - seg.start)), lo))
        row += seg.length
    passes: list[AttentionPass] = []
    current: list[Tile] = []
    items = 0
    for tile in tiles:
        count = (tile[2] * qt) // kb + 1
        if current and items + count > PASS_ITEMS:
            passes.append(_plan_pass(current, qt, kb, device))
            current, items = [], 0
        current.append(tile)
        items += count
    if current:
        passes.append(_plan_pass(current, qt, kb, device))
    return passes


def _plan_pass(tiles: list[Tile], qt: int, kb: int, device: torch.device) -> AttentionPass:
    blocks_of: dict[int, tuple[Segment, int]] = {}  # segment index -> (segment, blocks it lends)
    for s, seg, t, _, _ in tiles:
        blocks_of[s] = (seg, max(blocks_of.get(s, (seg, 0))[1], (t * qt) // kb + 1))
    base, start = {}, 0
    for s, (_, count) in blocks_of.items():
        base[s], start = start, start + count
    q_rows, q_slots, item_tile, item_block, item_q0, item_k0, own = [], [], [], [], [], [], []
    for local, (s, _, t, rows, first_position) in enumerate(tiles):
        q_rows += rows
        q_slots += [local * qt + (first_position + i) % qt for i in range(len(rows))]
        own.append((t * qt) // kb)
        for b in range(own[-1] + 1):
            item_tile.append(local)
            item_block.append(base[s] + b)
            item_q0.append(t * qt)
            item_k0.append(b * kb)
    real = len(item_tile)
    max_blocks = max(own) + 1
    first = [0] * len(tiles)
    for i in range(1, len(tiles)):
        first[i] = first[i - 1] + own[i - 1] + 1
    rect = [first[i] + b if b <= own[i] else -1 for i in range(len(tiles)) for b in range(max_blocks)]
    dummies = -real % CALL_ITEMS
    # dummy items: the zero tile against block 0 at position 0 (finite scores, read by nobody)
    item_tile += [len(tiles)] * dummies
    item_block += [0] * dummies
    item_q0 += [0] * dummies
    item_k0 += [0] * dummies
    n = real + dummies
    rect = [n if r < 0 else r for r in rect]

    def tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(device)

    return AttentionPass(
        sources=list(blocks_of.values()),
        tiles=len(tiles),
        max_blocks=max_blocks,
        q_rows=tensor(q_rows),
        q_slots=tensor(q_slots),
        item_tile=tensor(item_tile),
        item_block=tensor(item_block),
        item_q0=tensor(item_q0),
        item_k0=tensor(item_k0),
        rect=tensor(rect),
        own=tensor(own),
    )


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap), elementwise (Gemma 2's attention and final logits)."""
    return torch.tanh(x / cap) * cap


@dataclasses.dataclass(frozen=True)
class AttentionShape:
    """What fixed_attention needs of the model and layer."""

    kv_heads: int
    scale: float
    softcap: float  # 0: none
    window: int  # 0: full causal
    query_tile: int
    key_block: int


def fixed_attention(q: torch.Tensor, layer: int, passes: list[AttentionPass], shape: AttentionShape) -> torch.Tensor:
    """Causal attention of every query in `passes` over its sequence's cache, with the semantics and, on
    CPU, the bits of DecoderModel._attention_segment. q: [T, Hq, D] -> [T, Hq*D] (rows in no pass: 0)."""
    out = q.new_zeros(q.shape[0], q.shape[1] * q.shape[2])
    for p in passes:
        out[p.q_rows] = _attention_pass(q, layer, p, shape)
    return out


def _attention_pass(q: torch.Tensor, layer: int, p: AttentionPass, a: AttentionShape) -> torch.Tensor:
    """The queries of one pass -> [Q, Hq*D], in calls of CALL_ITEMS (query tile, key block) items."""
    _, hq, d = q.shape
    hkv, qt, kb = a.kv_heads, a.query_tile, a.key_block
    g, n = hq // hkv, p.item_tile.numel()
    qpad = q.new_zeros((p.tiles + 1) * qt, hq, d, dtype=torch.float32)  # the last tile stays zero (dummies)
    qpad[p.q_slots] = q[p.q_rows].float() * a.scale
    # [tiles+1, QT, Hkv, G, D] -> [tiles+1, Hkv, QT*G, D]: the G query heads of a KV head share its keys
    qtile = qpad.view(p.tiles + 1, qt, hkv, g, d).permute(0, 2, 1, 3, 4).reshape(p.tiles + 1, hkv, qt * g, d)
    keys, values = (
        torch.cat([getattr(seg.cache, name)[layer, :, : count * kb] for seg, count in p.sources], dim=1)
        .float()
        .view(hkv, -1, kb, d)  # [Hkv, stacked blocks, KB, D]
        for name in ("keys", "values")
    )
    calls = [slice(lo, lo + CALL_ITEMS) for lo in range(0, n, CALL_ITEMS)]
    scores = q.new_empty(n, hkv, qt * g, kb, dtype=torch.float32)
    for c in calls:  # [C*Hkv, QT*G, D] @ [C*Hkv, D, KB]
        qb = qtile.index_select(0, p.item_tile[c]).view(-1, qt * g, d)
        torch.bmm(qb, _blocks(keys, p.item_block[c]).transpose(1, 2), out=scores[c].view(-1, qt * g, kb))
    scores = scores.view(n, hkv, qt, g, kb)
    if a.softcap:
        scores = softcap(scores, a.softcap)
    scores = torch.where(_mask(p, a), scores, float("-inf"))
    # the exact maximum over each tile's items (own key always allowed: finite); the dummy tile's is 0
    rowmax = torch.cat([scores.amax(dim=-1), scores.new_full((1, hkv, qt, g), float("-inf"))])
    peak = rowmax[p.rect].view(p.tiles, p.max_blocks, hkv, qt, g).amax(dim=1)
    peak = torch.cat([peak, peak.new_zeros(1, hkv, qt, g)])[p.item_tile]  # [N, Hkv, QT, G]
    probs = torch.exp(scores - peak[..., None])  # masked keys: exactly 0
    sums = probs.new_empty(n, hkv, qt, g)
    weighted = probs.new_empty(n, hkv, qt * g, d)
    for c in calls:  # per-block sums [C, Hkv, QT, G, KB] -> [C, Hkv, QT, G]; [C*Hkv, QT*G, KB] @ [.., KB, D]
        torch.sum(probs[c], dim=-1, out=sums[c])
        pv = probs[c].view(-1, qt * g, kb)
        torch.bmm(pv, _blocks(values, p.item_block[c]), out=weighted[c].view(-1, qt * g, d))
    # each tile's blocks left to right (a sequential scan), read at its own block; pad rows add nothing
    rect = (p.tiles, p.max_blocks, hkv, qt, g)
    sums = torch.cat([sums, sums.new_zeros(1, hkv, qt, g)])[p.rect].view(rect)
    weighted = torch.cat([weighted.view(n, hkv, qt, g, d), weighted.new_zeros(1, hkv, qt, g, d)])[p.rect]
    own = p.own.view(p.tiles, 1, 1, 1, 1)
    total = torch.cumsum(sums, dim=1).gather(1, own.expand(*rect[:1], 1, *rect[2:]))[:, 0]
    own = own[..., None].expand(p.tiles, 1, hkv, qt, g, d)
    acc = torch.cumsum(weighted.view(*rect, d), dim=1).gather(1, own)[:, 0]
    attn = acc / total[..., None]  # [tiles, Hkv, QT, G, D]
    attn = attn.permute(0, 2, 1, 3, 4).reshape(p.tiles * qt, hq * d)
    return attn[p.q_slots].to(q.dtype)


def _blocks(stacked: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Key or value blocks [Hkv, B, KB, D] picked by `index` [C] -> [C*Hkv, KB, D], contiguous."""
    picked = stacked.index_select(1, index)  # [Hkv, C, KB, D]
    return picked.transpose(0, 1).reshape(-1, stacked.shape[2], stacked.shape[3])


def _mask(p: AttentionPass, a: AttentionShape) -> torch.Tensor:
    """Allowed (query, key) pairs of each item [N, 1, QT, 1, KB], by nominal absolute positions; per window."""
    if a.window not in p.masks:
        steps = torch.arange(max(a.query_tile, a.key_block), device=p.item_q0.device)
        qp = (p.item_q0[:, None] + steps[: a.query_tile])[:, None, :, None, None]
        kp = (p.item_k0[:, None] + steps[: a.key_block])[:, None, None, None, :]
        allowed = kp <= qp
        if a.window:
            allowed &= kp > qp - a.window
        p.masks[a.window] = allowed
    return p.masks[a.window]
