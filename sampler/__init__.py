"""seedstream.sampler: exact, seeded, batch-invariant sampling of one token per row.

Semantics of ``sample(logits, params, steps, ...)`` for one row; nothing depends on other rows,
on earlier calls, or on torch's global RNG.

1. x = logits in float32, padded with -inf to a multiple of 64 tokens. A row holding NaN or
   +inf is sanitised first (NaN -> -inf, +inf -> float32 max); a row with no finite value
   becomes all zeros (uniform). ``logprobs`` = log_softmax(x) at the chosen token.
2. Processed logits s, all float32: suppressed tokens -> -inf; repetition penalty
   (transformers/CTRL) once per token of prompt + output: s < 0 ? s * r : s / r; then
   s -= frequency_penalty * count + presence_penalty * (count > 0) over the generated tokens
   (OpenAI); then s += logit_bias; then s = min(s, float32 max). Ids outside [0, V) are ignored.
   The prompt and output come as the row's TokenHistory (``histories=``), not as id lists.
   If the edits leave no finite value, they are dropped for that row.
3. temperature == 0: greedy, the lowest token id holding max(s); processed_logprobs = 0.
4. Otherwise TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper and
   MinPLogitsWarper(min_tokens_to_keep=1) in that order define the kept set; top_k >= V is off.
   Canonical order: s descending, then token id ascending.
   - weights w: rows with top_k == 0 and (top_p < 1 or min_p == 0) use w = softmax(s / T)
     (torch.softmax in float32; s - max(s) first when max(s) / T overflows), except at T == 1
     with 0 <= max(x) - max(s) <= 16 (float32): there w = softmax(x), and exp(s - lse(x)) where
     s != x, lse(x) = max(x) - log(softmax(x)[argmax]). Other rows use w = exp((s - max(s)) / T).
     All are the same distribution up to float32 rounding.
   - top-k keeps the tokens with s >= the k-th largest s (ties at the boundary all kept).
   - top-p walks the top-k-kept tokens in canonical order and keeps a token while the mass
     strictly before it (float64 running sum of w) is < top_p * Z, where Z is the total
     top-k-kept weight summed as in 5. At least one token is kept; a tie at the boundary is
     broken towards lower token ids (transformers leaves it to its sort).
   - min-p keeps the tokens with w >= min_p * w(first token in canonical order).
5. The draw. u = H(seed, sample_index, step) / 2**53, H a SplitMix64-based hash computed with
   integer arithmetic (Python for the seed, torch int64 ops for the rest): the same bits on every
   device. Kept weights (0 elsewhere) are summed per 64-token chunk in float32; the chunk sums
   are accumulated in float64, in token-id order, to Z. t = min(u * Z, Z * (1 - 2**-52)); the
   chunk is the first whose running sum exceeds t, and inside it the token is the first whose
   float64 running sum exceeds the rest r of t, r = min(r, R * (1 - 2**-52)) with R the chunk's
   own running total. A token of zero weight is never chosen. processed_logprobs =
   log(w_token / Z).

The inverse CDF walks token-id order rather than canonical order: any fixed order is
batch-independent, and this one needs no sort of the vocabulary even when every token is kept.

The fast path reads only the 64-token blocks whose maximum can reach the kept set, from a
threshold proven from block maxima (top-p: a guess that is verified, else every token is read),
and yields the same bits as the plain definition above; tests compare both.
"""

from .core import MAX_TOP_N, SampleResult, sample
from .history import TokenHistory
from .params import SamplingParamError, SamplingParams

SAMPLER_VERSION = "1"  # bump whenever (seed, step, logits, params) could yield another token

__all__ = [
    "MAX_TOP_N",
    "SAMPLER_VERSION",
    "SampleResult",
    "SamplingParamError",
    "SamplingParams",
    "TokenHistory",
    "sample",
]
