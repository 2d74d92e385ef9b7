//! The CPU fast path of the ViT body: the same function as
//! [`VisionTransformer::forward_candle_ops`], computed on the weights in place with fused row
//! kernels and strided matrix products instead of one candle op per step.
//!
//! Everything in a transformer block except attention works row by row (one row per token),
//! so the `(batch * tokens)` rows are split into one contiguous chunk per thread, and each
//! thread carries its rows through attention, `proj`, the MLP and the next block's `norm1` and
//! `qkv` before the threads meet again: one synchronisation per block, a short spin in
//! [`team::run_stages`] (the threads stay in the pass from its first block to its last).
//! Attention reads every
//! row's keys and values, so each block's `qkv` output goes to a second buffer while the
//! current one is still being read. Within a chunk, rows are processed in tiles so the MLP's
//! hidden activations stay in cache. Attention reads `q`, `k` and `v` straight out of the
//! `qkv` rows through strides, with no split, permute or copy. The last block runs for the
//! class tokens only, the one row per image the pooled output reads.

pub(crate) mod conv;
pub(crate) mod depthwise;
pub(crate) mod kernels;
mod matmul;
pub(crate) mod nhwc;
pub(crate) mod packed;
mod team;

use candle_core::{CpuStorage, DType, Storage, StorageRef, Tensor};
use std::sync::{Arc, Mutex};

use self::kernels::{add_bias_rows, bias_gelu_rows, layer_norm_rows, softmax_rows, Simd};
use self::matmul::{matmul, MatRef};
use self::packed::{matmul_packed, pack_rows, pack_transposed, PackedB, PackedRef};
use self::team::{run_stages, Shared, TaskPanic};
use super::vit::LinearWeight;
use super::VisionTransformer;

/// Rows per tile: keeps a tile's MLP activations (`TILE x 4 * embed_dim`) in L2.
const TILE: usize = 128;
/// A chunk smaller than this is not worth a thread of its own.
const MIN_CHUNK_ROWS: usize = 32;

/// A read lock on an f32 CPU tensor's storage, giving its elements as a slice.
struct Host<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> Host<'a> {
    /// `None` unless `t` is a contiguous f32 tensor in CPU memory.
    fn new(t: &'a Tensor) -> Option<Self> {
        if t.dtype() != DType::F32 || !t.device().is_cpu() || !t.is_contiguous() {
            return None;
        }
        let (guard, layout) = t.storage_and_layout();
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            return None;
        }
        Some(Host {
            start: layout.start_offset(),
            len: t.elem_count(),
            guard,
        })
    }

    fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => &[],
        }
    }
}

/// Runs `f` on the elements of `t` when it is a contiguous f32 tensor in CPU memory.
pub(crate) fn with_host_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    Host::new(t).map(|h| f(h.slice()))
}

/// A linear layer's weight: transposed `(in, out)` row-major, or packed; and its bias.
struct LinW<'a> {
    w: Option<&'a [f32]>,
    packed: Option<&'a PackedB>,
    b: &'a [f32],
}

impl LinW<'_> {
    /// `dst = x · W` (or `dst += x · W`) for `m` rows of `k` inputs into rows of `n` outputs;
    /// with `bias`, `dst = b + x · W` (or `dst = (dst + b) + x · W`), the bits of writing (or
    /// adding) the bias first and accumulating the product after.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        m: usize,
        k: usize,
        n: usize,
        x: &[f32],
        dst: &mut [f32],
        dst_row_stride: usize,
        accumulate: bool,
        bias: bool,
    ) {
        match (self.packed, self.w) {
            (Some(p), _) if packed::available() && p.view().k == k && p.view().n == n => {
                let b = bias.then_some(self.b);
                matmul_packed(m, x, k, p.view(), dst, dst_row_stride, accumulate, b)
            }
            (_, None) => panic!("internal: a packed weight without the kernels to run it"),
            (_, Some(w)) => {
                if bias {
                    for row in dst.chunks_mut(dst_row_stride).take(m) {
                        let row = &mut row[..n];
                        if accumulate {
                            add_bias_rows(row, self.b);
                        } else {
                            row.copy_from_slice(self.b);
                        }
                    }
                }
                matmul(
                    m,
                    n,
                    k,
                    dst,
                    dst_row_stride,
                    accumulate || bias,
                    MatRef::rows(x, k),
                    MatRef::rows(w, n),
                    1.0,
                )
            }
        }
    }
}

/// The patch embedding, class token and position embedding.
struct Embed<'a> {
    proj: LinW<'a>,
    cls: &'a [f32],
    pos: &'a [f32],
}

/// One block's weights as slices.
struct BlockW<'a> {
    norm1: (&'a [f32], &'a [f32]),
    qkv: LinW<'a>,
    proj: LinW<'a>,
    norm2: (&'a [f32], &'a [f32]),
    fc1: LinW<'a>,
    fc2: LinW<'a>,
}

/// The dimensions every kernel needs.
#[derive(Clone, Copy)]
struct Dims {
    /// Token width.
    d: usize,
    /// Tokens per image (patches + class token).
    n: usize,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    chans: usize,
    patch: usize,
    grid: usize,
    img: usize,
    eps: f32,
}

/// Per-thread scratch.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    attn: Vec<f32>,
    hidden: Vec<f32>,
    scores: Vec<f32>,
    patches: Vec<f32>,
    /// Per head, the current image's keys, transposed, scaled and packed.
    keys: Vec<Vec<f32>>,
    /// Per head, the current image's values, packed.
    values: Vec<Vec<f32>>,
    /// The image `keys` and `values` hold, in the current block.
    kv_image: Option<usize>,
}

/// Buffers a forward pass needs, kept between calls: allocating megabytes of fresh memory on
/// every call costs a page fault per 4 KiB (about 1 ms per 2.5 MB on this kind of VM).
#[derive(Default)]
pub(crate) struct Workspace {
    x: Vec<f32>,
    /// The two `qkv` buffers: stage `s` writes `qkv[s % 2]` and reads the other.
    qkv: [Vec<f32>; 2],
    scratch: Vec<Scratch>,
    balance: Balance,
}

/// How much larger than its last pass needed a workspace may stay (32 MiB of floats): below
/// this, alternating batch sizes keep their buffers (reallocating them costs a page fault per
/// 4 KiB every time), above it a large batch's buffers are given back.
const TRIM_SLACK_FLOATS: usize = 8 << 20;

/// Workspaces shared by clones of a model; each concurrent forward pass takes its own, so the
/// pool holds at most as many as there were simultaneous calls. A workspace for batch `B` holds
/// about `B * tokens * 7 * embed_dim` floats (34 MB for ViT-tiny at batch 32).
///
/// A pass takes the idle workspace whose buffers fit its batch most closely, and a workspace
/// more than twice as large as its pass needed (after a large batch), by more than 32 MiB, is
/// trimmed to that pass's size when it comes back, so memory follows the batches being run rather than the
/// largest ever. Idle workspaces beyond the pool's thread count are dropped.
#[derive(Clone, Default)]
pub(crate) struct WorkspacePool(Arc<Mutex<PoolState>>);

#[derive(Default)]
struct PoolState {
    idle: Vec<Workspace>,
    /// The test hook's panic for the next pass: `(stage, task)`.
    inject_panic: Option<(usize, usize)>,
}

impl std::fmt::Debug for WorkspacePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkspacePool")
    }
}

impl WorkspacePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A workspace for a pass whose large buffers need `need` floats (the best-fitting idle
    /// one, or a new one), and the test hook's panic if one is set.
    fn take(&self, need: usize) -> (Workspace, Option<(usize, usize)>) {
        let mut st = self.lock();
        let inject = st.inject_panic.take();
        // The smallest idle workspace that is large enough, else the largest.
        let best = st
            .idle
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| {
                let have = w.floats();
                (
                    have < need,
                    if have < need { usize::MAX - have } else { have },
                )
            })
            .map(|(i, _)| i);
        let ws = best.map(|i| st.idle.swap_remove(i)).unwrap_or_default();
        (ws, inject)
    }

    /// Returns a workspace after a pass that needed `need` floats, trimmed to that if it is
    /// more than twice as large and more than [`TRIM_SLACK_FLOATS`] larger.
    fn give_back(&self, mut ws: Workspace, need: usize) {
        let have = ws.floats();
        if have > 2 * need && have - need > TRIM_SLACK_FLOATS {
            ws.trim(need);
        }
        let mut st = self.lock();
        if st.idle.len() < rayon::current_num_threads().max(2) {
            st.idle.push(ws);
        }
    }

    /// Sets the test hook's panic for the next pass.
    pub(crate) fn inject_panic(&self, stage: usize, task: usize) {
        self.lock().inject_panic = Some((stage, task));
    }
}

impl Workspace {
    /// Floats held by the pass-wide buffers (`x` and the two `qkv`).
    fn floats(&self) -> usize {
        self.x.capacity() + self.qkv[0].capacity() + self.qkv[1].capacity()
    }

    /// Shrinks the pass-wide buffers to what a pass needing `need` floats uses (`x` is a
    /// seventh of it, each `qkv` three sevenths).
    fn trim(&mut self, need: usize) {
        let rows_d = need / 7;
        let [q0, q1] = &mut self.qkv;
        for (v, len) in [(&mut self.x, rows_d), (q0, 3 * rows_d), (q1, 3 * rows_d)] {
            // A new allocation, so that the large one is freed (and returned to the system).
            let mut small = Vec::with_capacity(len);
            small.extend_from_slice(&v[..len.min(v.len())]);
            *v = small;
        }
    }
}

/// Grows `v` to at least `len` elements (contents are overwritten before they are read).
fn at_least(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Adds `t` to the tensors read as slices; returns its index.
fn push<'v>(tensors: &mut Vec<&'v Tensor>, t: &'v Tensor) -> usize {
    tensors.push(t);
    tensors.len() - 1
}

/// A linear layer before its tensors are read: the dense weight's index (when not packed),
/// the packed weight, and the bias's index.
struct LinIdx<'v> {
    dense: Option<usize>,
    packed: Option<&'v PackedB>,
    bias: usize,
}

impl<'v> LinIdx<'v> {
    fn new(tensors: &mut Vec<&'v Tensor>, w: &'v LinearWeight, bias: &'v Tensor) -> Self {
        let (dense, packed) = match w {
            LinearWeight::Dense(t) => (Some(push(tensors, t)), None),
            LinearWeight::Packed(p) => (None, Some(p)),
        };
        LinIdx {
            dense,
            packed,
            bias: push(tensors, bias),
        }
    }

    fn resolve<'a>(&self, s: &[&'a [f32]]) -> LinW<'a>
    where
        'v: 'a,
    {
        LinW {
            w: self.dense.map(|i| s[i]),
            packed: self.packed,
            b: s[self.bias],
        }
    }
}

/// One block's tensors as indices (see [`LinIdx`]).
struct BlockIdx<'v> {
    norm1: (usize, usize),
    qkv: LinIdx<'v>,
    proj: LinIdx<'v>,
    norm2: (usize, usize),
    fc1: LinIdx<'v>,
    fc2: LinIdx<'v>,
}

/// Runs the body on the CPU fast path, or returns `None` when it does not apply (weights or
/// input not f32 in CPU memory, or an input shape the generic path should reject). A panic in
/// the pass (a bug) comes back as an error, with every thread released.
pub(crate) fn vit_forward(
    vit: &VisionTransformer,
    x: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let cfg = &vit.cfg;
    let (batch, chans, h, w) = match x.dims4() {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    if chans != cfg.in_chans || h != cfg.img_size || w != cfg.img_size || batch == 0 {
        return Ok(None);
    }
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let Some(input) = Host::new(&x) else {
        return Ok(None);
    };

    let mut tensors: Vec<&Tensor> = Vec::new();
    let pe = &vit.patch_embed;
    let embed_idx = LinIdx::new(&mut tensors, &pe.weight, &pe.bias);
    let cls_idx = push(&mut tensors, &vit.cls_token);
    let pos_idx = push(&mut tensors, &vit.pos_embed);
    let mut block_idx = Vec::with_capacity(vit.blocks.len());
    for b in &vit.blocks {
        let (Some(qkv_b), Some(proj_b), Some(fc1_b), Some(fc2_b)) = (
            b.attn.qkv.bias.as_ref(),
            b.attn.proj.bias.as_ref(),
            b.mlp.fc1.bias.as_ref(),
            b.mlp.fc2.bias.as_ref(),
        ) else {
            return Ok(None);
        };
        let (Some(n1b), Some(n2b)) = (b.norm1.bias(), b.norm2.bias()) else {
            return Ok(None);
        };
        block_idx.push(BlockIdx {
            norm1: (
                push(&mut tensors, b.norm1.weight()),
                push(&mut tensors, n1b),
            ),
            qkv: LinIdx::new(&mut tensors, &b.attn.qkv.weight, qkv_b),
            proj: LinIdx::new(&mut tensors, &b.attn.proj.weight, proj_b),
            norm2: (
                push(&mut tensors, b.norm2.weight()),
                push(&mut tensors, n2b),
            ),
            fc1: LinIdx::new(&mut tensors, &b.mlp.fc1.weight, fc1_b),
            fc2: LinIdx::new(&mut tensors, &b.mlp.fc2.weight, fc2_b),
        });
    }
    let Some(norm_b) = vit.norm.bias() else {
        return Ok(None);
    };
    let norm_idx = (
        push(&mut tensors, vit.norm.weight()),
        push(&mut tensors, norm_b),
    );
    let Some(hosts) = tensors
        .iter()
        .map(|t| Host::new(t))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let s: Vec<&[f32]> = hosts.iter().map(Host::slice).collect();
    let blocks: Vec<BlockW> = block_idx
        .iter()
        .map(|bi| BlockW {
            norm1: (s[bi.norm1.0], s[bi.norm1.1]),
            qkv: bi.qkv.resolve(&s),
            proj: bi.proj.resolve(&s),
            norm2: (s[bi.norm2.0], s[bi.norm2.1]),
            fc1: bi.fc1.resolve(&s),
            fc2: bi.fc2.resolve(&s),
        })
        .collect();
    let final_norm = (s[norm_idx.0], s[norm_idx.1]);

    let grid = cfg.img_size / cfg.patch_size;
    let dm = Dims {
        d: cfg.embed_dim,
        n: grid * grid + 1,
        heads: cfg.num_heads,
        head_dim: cfg.embed_dim / cfg.num_heads,
        hidden: cfg.mlp_hidden(),
        chans,
        patch: cfg.patch_size,
        grid,
        img: cfg.img_size,
        eps: cfg.layer_norm_eps as f32,
    };
    let embed = Embed {
        proj: embed_idx.resolve(&s),
        cls: s[cls_idx],
        pos: s[pos_idx],
    };
    // The pass-wide buffers' floats: `x` (`d` per row) and the two `qkv` (`3 * d` each).
    let need = 7 * batch * dm.n * dm.d;
    let (mut ws, inject_panic) = vit.workspaces.take(need);
    let level = vit.simd;
    // Inside the thread pool: the pass's stages then run on pool threads, and the calling
    // thread is woken once, at the end.
    let out = rayon::scope(|_| {
        kernels::with_level(level, || {
            run(
                input.slice(),
                batch,
                &dm,
                &embed,
                &blocks,
                final_norm,
                &mut ws,
                Pass {
                    level,
                    inject_panic,
                },
            )
        })
    });
    match out {
        Ok(out) => {
            vit.workspaces.give_back(ws, need);
            Ok(Some(Tensor::from_vec(
                out,
                (batch, dm.d),
                &candle_core::Device::Cpu,
            )?))
        }
        // The workspace is dropped: a pass that panicked may have left it half updated.
        Err(p) => Err(candle_core::Error::Msg(format!(
            "the CPU fast path failed (a bug): a task panicked: {}",
            p.message()
        ))),
    }
}

/// How a pass runs: its model's instruction sets, and the test hook's panic.
#[derive(Clone, Copy)]
struct Pass {
    level: Simd,
    inject_panic: Option<(usize, usize)>,
}

/// The whole body on `batch` images: returns the final-normed class tokens, `(batch, d)`.
///
/// The pass is [`run_stages`]'s chain of stages, one task per thread in each: stage 0 embeds
/// the patches and runs the first block's `norm1` + `qkv`; stage `1 + i` runs block `i` on
/// each chunk's rows, reading every row's keys and values from `qkv[i % 2]` and writing the
/// next block's `qkv` rows to `qkv[(i + 1) % 2]`; the last block's stage runs the class
/// tokens only, one group of images per task.
#[allow(clippy::too_many_arguments)]
fn run(
    input: &[f32],
    batch: usize,
    dm: &Dims,
    embed: &Embed,
    blocks: &[BlockW],
    final_norm: (&[f32], &[f32]),
    ws: &mut Workspace,
    pass: Pass,
) -> Result<Vec<f32>, TaskPanic> {
    let Dims { d, n, .. } = *dm;
    let rows = batch * n;
    let threads = rayon::current_num_threads().max(1);
    let chunks = threads.min(rows.div_ceil(MIN_CHUNK_ROWS)).max(1);
    let tile = rows.min(TILE);
    let layers = blocks.len();
    // The last stage's image groups, one per task.
    let per_group = batch.div_ceil(chunks);

    let Workspace {
        x,
        qkv: [qkv_even, qkv_odd],
        scratch,
        balance,
    } = ws;
    balance.reset(chunks, rows);
    let x = at_least(x, rows * d);
    let qkv = [
        Shared::new(at_least(qkv_even, rows * 3 * d)),
        Shared::new(at_least(qkv_odd, rows * 3 * d)),
    ];
    if scratch.len() < chunks {
        scratch.resize_with(chunks, Scratch::default);
    }
    for sc in scratch.iter_mut() {
        at_least(&mut sc.normed, tile * d);
        at_least(&mut sc.attn, tile * d);
        at_least(&mut sc.hidden, tile * dm.hidden);
        at_least(&mut sc.scores, tile * n.div_ceil(packed::NR) * packed::NR);
        at_least(&mut sc.patches, tile * dm.chans * dm.patch * dm.patch);
    }
    let scratch = Shared::new(&mut scratch[..chunks]);
    let xs = Shared::new(&mut x[..]);
    // The split of the rows (changed only between stages) and each chunk's last time.
    let plan = Mutex::new((balance, vec![0f64; chunks]));
    let bounds = |c: usize| {
        let plan = plan.lock().unwrap_or_else(|e| e.into_inner());
        let b = plan.0.bounds();
        (b[c], b[c + 1])
    };

    let task = |stage: usize, c: usize| {
        let start = std::time::Instant::now();
        // SAFETY: task `c` is the only one using scratch `c`.
        let mut sc = unsafe { scratch.range_mut(c..c + 1) };
        let sc = &mut sc[0];
        sc.kv_image = None;
        if stage == layers && stage > 0 {
            // The last block: only the class tokens reach the output (timm's token
            // pooling reads `x[:, 0]` after the final norm), and every row is computed
            // independently of the others given the keys and values, so the other rows'
            // attention and MLP are skipped. Their keys and values are all read.
            let blk = &blocks[stage - 1];
            // SAFETY: this stage writes no `qkv` buffer, and the image groups' rows of
            // `x` are disjoint.
            let (cur, mut xg) = unsafe {
                let g = (c * per_group).min(batch)..((c + 1) * per_group).min(batch);
                (
                    qkv[(stage - 1) % 2].all(),
                    xs.range_mut(g.start * n * d..g.end * n * d),
                )
            };
            for (j, image) in xg.chunks_exact_mut(n * d).enumerate() {
                let row0 = (c * per_group + j) * n;
                let cls = &mut image[..d];
                attention_tile(&cur, row0, cls, sc, dm, blk);
                mlp_tile(cls, sc, dm, blk);
            }
            return;
        }
        let (lo, hi) = bounds(c);
        // SAFETY: during a stage the chunks' rows are disjoint (the bounds change only
        // between stages), and a stage writes `qkv[stage % 2]` and reads only the other.
        let (mut xc, mut qc) = unsafe {
            (
                xs.range_mut(lo * d..hi * d),
                qkv[stage % 2].range_mut(lo * 3 * d..hi * 3 * d),
            )
        };
        if stage == 0 {
            for_each_tile(lo, &mut xc, &mut qc, sc, tile, d, |row0, xt, qt, sc| {
                embed_tile(input, row0, xt, sc, dm, embed);
                if let Some(first) = blocks.first() {
                    norm_qkv_tile(xt, qt, sc, dm, first);
                }
            });
        } else {
            let (blk, next_blk) = (&blocks[stage - 1], blocks.get(stage));
            // SAFETY: see above: nothing writes `qkv[(stage - 1) % 2]` in this stage.
            let cur = unsafe { qkv[(stage - 1) % 2].all() };
            for_each_tile(lo, &mut xc, &mut qc, sc, tile, d, |row0, xt, qt, sc| {
                attention_tile(&cur, row0, xt, sc, dm, blk);
                mlp_tile(xt, sc, dm, blk);
                if let Some(nb) = next_blk {
                    norm_qkv_tile(xt, qt, sc, dm, nb);
                }
            });
        }
        let mut plan = plan.lock().unwrap_or_else(|e| e.into_inner());
        plan.1[c] = start.elapsed().as_secs_f64();
    };
    run_stages(
        1 + layers,
        chunks,
        pass.inject_panic,
        // Each task runs at the model's level on whichever thread takes it.
        |stage, c| kernels::with_level(pass.level, || task(stage, c)),
        |stage| {
            // After each whole block, the split moves towards the chunks' measured speeds.
            if stage > 0 && stage < layers {
                let mut plan = plan.lock().unwrap_or_else(|e| e.into_inner());
                let (balance, secs) = &mut *plan;
                balance.update(secs);
            }
        },
    )?;

    let mut out = vec![0f32; batch * d];
    for (b, o) in out.chunks_exact_mut(d).enumerate() {
        let cls = &x[b * n * d..(b * n + 1) * d];
        layer_norm_rows(cls, o, final_norm.0, final_norm.1, dm.eps);
    }
    Ok(out)
}

/// Runs `f(first_global_row, x_tile, qkv_tile, scratch)` on a chunk of rows starting at global
/// row `row0`, cut into equal tiles of at most `tile` rows.
fn for_each_tile<F>(
    row0: usize,
    xc: &mut [f32],
    qc: &mut [f32],
    sc: &mut Scratch,
    tile: usize,
    d: usize,
    mut f: F,
) where
    F: FnMut(usize, &mut [f32], &mut [f32], &mut Scratch),
{
    let rows = xc.len() / d;
    let t = rows.div_ceil(rows.div_ceil(tile.max(1)).max(1));
    let mut t0 = 0;
    while t0 < rows {
        let t = t.min(rows - t0);
        f(
            row0 + t0,
            &mut xc[t0 * d..(t0 + t) * d],
            &mut qc[t0 * 3 * d..(t0 + t) * 3 * d],
            sc,
        );
        t0 += t;
    }
}

/// How the rows are shared out among the threads, rebalanced after every block from the time
/// each thread's chunk took: a virtual machine's cores do not always run at the same speed
/// (this project's VM was seen running one at half speed for seconds at a time), and with
/// equal chunks the faster thread waits for the slower at the end of every block. Kept
/// between forward passes. Any split gives the same bits: every row is computed alone.
#[derive(Default)]
struct Balance {
    /// Chunk `i` is rows `bounds[i]..bounds[i + 1]`.
    bounds: Vec<usize>,
}

impl Balance {
    /// Equal chunks unless the current split is for the same rows and chunk count.
    fn reset(&mut self, chunks: usize, rows: usize) {
        if self.bounds.len() == chunks + 1 && self.bounds.last() == Some(&rows) {
            return;
        }
        self.bounds = (0..=chunks).map(|i| i * rows / chunks).collect();
    }

    fn bounds(&self) -> &[usize] {
        &self.bounds
    }

    /// Moves half way from the current split towards the one that would have made every chunk
    /// take the same time at the speeds just measured, each chunk keeping at least a quarter of
    /// an equal share.
    fn update(&mut self, secs: &[f64]) {
        let chunks = self.bounds.len() - 1;
        let rows = self.bounds[chunks];
        if chunks < 2 || secs.len() != chunks || secs.iter().any(|&t| t.is_nan() || t <= 0.0) {
            return;
        }
        let speeds: Vec<f64> = self
            .bounds
            .windows(2)
            .zip(secs)
            .map(|(w, t)| (w[1] - w[0]) as f64 / t)
            .collect();
        let total: f64 = speeds.iter().sum();
        // Half the current size plus half the speed-proportional one: the sizes still add up
        // to `rows`.
        let sizes: Vec<f64> = self
            .bounds
            .windows(2)
            .zip(&speeds)
            .map(|(w, s)| 0.5 * (w[1] - w[0]) as f64 + 0.5 * rows as f64 * s / total)
            .collect();
        // At least a quarter of an equal share (and one row) per chunk.
        let floor = (rows / chunks / 4).max(1);
        let mut acc = 0.0;
        for (i, v) in sizes.iter().enumerate().take(chunks - 1) {
            acc += v;
            let lo = self.bounds[i] + floor;
            let hi = rows - (chunks - 1 - i) * floor;
            self.bounds[i + 1] = (acc.round() as usize).clamp(lo, hi.max(lo));
        }
    }
}

/// Token rows `row0..` of the embedding: the class token or a patch's projection, plus the
/// position embedding. The patches are gathered (im2col) and projected with one matmul.
fn embed_tile(
    input: &[f32],
    row0: usize,
    xt: &mut [f32],
    sc: &mut Scratch,
    dm: &Dims,
    embed: &Embed,
) {
    let (proj_b, cls, pos) = (embed.proj.b, embed.cls, embed.pos);
    let Dims {
        d,
        n,
        chans,
        patch: p,
        grid,
        img,
        ..
    } = *dm;
    let t = xt.len() / d;
    let k = chans * p * p;
    let patches = &mut sc.patches[..t * k];
    for r in 0..t {
        let g = row0 + r;
        let (b, tok) = (g / n, g % n);
        let xr = &mut xt[r * d..(r + 1) * d];
        let pr = &mut patches[r * k..(r + 1) * k];
        let pos_r = &pos[tok * d..(tok + 1) * d];
        if tok == 0 {
            for i in 0..d {
                xr[i] = cls[i] + pos_r[i];
            }
            pr.fill(0.0);
            continue;
        }
        for i in 0..d {
            xr[i] = pos_r[i] + proj_b[i];
        }
        let (gy, gx) = ((tok - 1) / grid, (tok - 1) % grid);
        for c in 0..chans {
            for ky in 0..p {
                let src = ((b * chans + c) * img + gy * p + ky) * img + gx * p;
                let dst = (c * p + ky) * p;
                pr[dst..dst + p].copy_from_slice(&input[src..src + p]);
            }
        }
    }
    embed.proj.apply(t, k, d, patches, xt, d, true, false);
}

/// `qkv = norm1(x) · Wqkvᵀ + b` for a tile.
fn norm_qkv_tile(xt: &[f32], qt: &mut [f32], sc: &mut Scratch, dm: &Dims, blk: &BlockW) {
    let d = dm.d;
    let t = xt.len() / d;
    let normed = &mut sc.normed[..t * d];
    layer_norm_rows(xt, normed, blk.norm1.0, blk.norm1.1, dm.eps);
    // Computed into the MLP's scratch (free again by now, and in L2), then copied out in one
    // go: written straight into the pass-wide `qkv` buffer (last touched two stages earlier),
    // the kernel's stores stall on fetching their lines, and at batch 32 `qkv` took 24% longer
    // than with its output in cache (per-op timers). With the copy, interleaved A/B runs gave
    // batch 1 -6% and -9%, batch 32 -1% and +5% (noise on this VM).
    match sc.hidden.get_mut(..qt.len()) {
        Some(staged) => {
            blk.qkv
                .apply(t, d, 3 * d, normed, staged, 3 * d, false, true);
            qt.copy_from_slice(staged);
        }
        None => blk.qkv.apply(t, d, 3 * d, normed, qt, 3 * d, false, true),
    }
}

/// `x += proj(attention(qkv))` for the tile's rows; keys and values come from every row of
/// the same image in `qkv`.
fn attention_tile(
    qkv: &[f32],
    row0: usize,
    xt: &mut [f32],
    sc: &mut Scratch,
    dm: &Dims,
    blk: &BlockW,
) {
    let Dims {
        d,
        n,
        heads,
        head_dim: hd,
        ..
    } = *dm;
    let t = xt.len() / d;
    let scale = 1.0 / (hd as f32).sqrt();
    let packed = packed::available() && hd.is_multiple_of(packed::NR);
    let layout = packed::Layout::preferred();
    let mut r = 0;
    while r < t {
        let g = row0 + r;
        let (b, tok) = (g / n, g % n);
        let seg = (t - r).min(n - tok);
        let img_base = b * n * 3 * d;
        if packed {
            // Pack this image's keys (scaled) and values once per block per thread, then run
            // both products on the packed kernel; score rows are padded to a multiple of 32.
            if sc.kv_image != Some(b) {
                sc.keys.resize_with(heads, Vec::new);
                sc.values.resize_with(heads, Vec::new);
                for h in 0..heads {
                    let k_src = &qkv[img_base + d + h * hd..];
                    pack_transposed(k_src, (hd, n), 3 * d, scale, layout, &mut sc.keys[h]);
                    let v_src = &qkv[img_base + 2 * d + h * hd..];
                    pack_rows(v_src, (n, hd), 3 * d, layout, &mut sc.values[h]);
                }
                sc.kv_image = Some(b);
            }
            let np = n.div_ceil(packed::NR) * packed::NR;
            for h in 0..heads {
                let keys = PackedRef {
                    k: hd,
                    n: np,
                    layout,
                    data: &sc.keys[h],
                };
                let scores = &mut sc.scores[..seg * np];
                matmul_packed(
                    seg,
                    &qkv[g * 3 * d + h * hd..],
                    3 * d,
                    keys,
                    scores,
                    np,
                    false,
                    None,
                );
                softmax_rows(scores, n, np);
                let values = PackedRef {
                    k: n,
                    n: hd,
                    layout,
                    data: &sc.values[h],
                };
                matmul_packed(
                    seg,
                    scores,
                    np,
                    values,
                    &mut sc.attn[r * d + h * hd..],
                    d,
                    false,
                    None,
                );
            }
            r += seg;
            continue;
        }
        for h in 0..heads {
            let scores = &mut sc.scores[..seg * n];
            matmul(
                seg,
                n,
                hd,
                scores,
                n,
                false,
                MatRef::rows(&qkv[g * 3 * d + h * hd..], 3 * d),
                MatRef::transposed(&qkv[img_base + d + h * hd..], 3 * d),
                scale,
            );
            softmax_rows(scores, n, n);
            matmul(
                seg,
                hd,
                n,
                &mut sc.attn[r * d + h * hd..],
                d,
                false,
                MatRef::rows(scores, n),
                MatRef::rows(&qkv[img_base + 2 * d + h * hd..], 3 * d),
                1.0,
            );
        }
        r += seg;
    }
    blk.proj
        .apply(t, d, d, &sc.attn[..t * d], xt, d, true, true);
}

/// `x += fc2(gelu(fc1(norm2(x))))` for a tile.
fn mlp_tile(xt: &mut [f32], sc: &mut Scratch, dm: &Dims, blk: &BlockW) {
    let Dims { d, hidden, .. } = *dm;
    let t = xt.len() / d;
    let normed = &mut sc.normed[..t * d];
    layer_norm_rows(xt, normed, blk.norm2.0, blk.norm2.1, dm.eps);
    let hid = &mut sc.hidden[..t * hidden];
    blk.fc1
        .apply(t, d, hidden, normed, hid, hidden, false, false);
    bias_gelu_rows(hid, blk.fc1.b);
    blk.fc2.apply(t, hidden, d, hid, xt, d, true, true);
}

/// The convolution fast paths' reference: candle's `conv2d`, then the bias, the residual and
/// the ReLU as ops.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    s: usize,
    p: usize,
    relu: bool,
    r: Option<&Tensor>,
) -> Tensor {
    let mut y = x.conv2d(w, p, s, 1, 1).unwrap();
    if let Some(b) = b {
        y = y
            .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
            .unwrap();
    }
    if let Some(r) = r {
        y = (y + r).unwrap();
    }
    if relu {
        y = y.relu().unwrap();
    }
    y
}

/// Largest |a - b| over the largest |b| (at least 1): the fast paths' tests' measure against
/// candle's ops.
#[cfg(test)]
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    let d = d.max(0).unwrap().to_scalar::<f32>().unwrap();
    let s = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d / s.to_scalar::<f32>().unwrap().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::Balance;

    /// The split starts equal, moves rows to the faster chunk, keeps every row in exactly one
    /// chunk, never starves a chunk, and comes back when the speeds even out.
    #[test]
    fn balance_moves_rows_to_the_faster_thread() {
        let mut b = Balance::default();
        b.reset(2, 197);
        assert_eq!(b.bounds(), &[0, 98, 197]);
        // Chunk 1 took twice as long for about the same rows: it gets fewer.
        b.update(&[1.0, 2.0]);
        let first = b.bounds()[1];
        assert!(first > 98 && first < 197, "{:?}", b.bounds());
        for _ in 0..50 {
            b.update(&[1.0, 100.0]);
            let w = b.bounds();
            assert_eq!((w[0], w[2]), (0, 197));
            assert!(
                w[2] - w[1] >= 197 / 8,
                "a chunk keeps a quarter of its share: {w:?}"
            );
        }
        // Equal times per row: back towards equal chunks.
        for _ in 0..50 {
            let w = b.bounds().to_vec();
            b.update(&[(w[1] - w[0]) as f64, (w[2] - w[1]) as f64]);
        }
        let w = b.bounds();
        assert!((w[1] as i64 - 98).abs() <= 2, "{w:?}");
        // Bad timings change nothing; another shape starts again from equal chunks.
        let before = b.bounds().to_vec();
        b.update(&[0.0, 1.0]);
        b.update(&[f64::NAN, 1.0]);
        assert_eq!(b.bounds(), &before[..]);
        b.reset(3, 30);
        assert_eq!(b.bounds(), &[0, 10, 20, 30]);
        b.update(&[1.0, 1.0, 4.0]);
        let w = b.bounds();
        assert!(w.windows(2).all(|p| p[0] < p[1]) && w[3] == 30, "{w:?}");
    }
}
