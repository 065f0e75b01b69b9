//! The CPU f32 forward's own kernels, for the passes where candle's generic ops cost most
//! beside the GEMMs at one thread (about a third of a ViT-B/16 block):
//!
//! - linear layers write their GEMM straight onto the bias, and apply QuickGELU while the output
//!   is still theirs, instead of a zeroed buffer, a broadcast add and an activation op chain;
//! - attention runs per (window, head) on q, k and v read in place from the qkv projection with
//!   strided GEMMs, its scores small enough to stay in cache, and writes each head's output into
//!   its columns of the merged result: no head split or merge copies, no batch-sized score
//!   tensors;
//! - softmax and QuickGELU are single passes with an `exp` the compiler vectorises (candle's
//!   are chains of ops with a scalar `exp`), compiled for AVX-512 and AVX2 and picked at run
//!   time.
//!
//! CUDA and the other dtypes keep candle's ops; `applies` says which path a tensor takes.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor,
};
use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;

use super::{amx, Epilogue, Gram, Mixing};

/// Whether `xs` can take these kernels: f32 and on the CPU.
pub fn applies(xs: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32
}

/// `xs * weight_t + bias`, then the epilogue, as a new tensor: `xs` is rows x in, `weight_t`
/// in x out, `bias` out.
pub fn linear(
    xs: &Tensor,
    weight_t: &Tensor,
    bias: &Tensor,
    epilogue: Epilogue,
) -> candle_core::Result<Tensor> {
    xs.apply_op3_no_bwd(weight_t, bias, &Linear { epilogue })
}

/// Multi-head attention on the output of a fused q|k|v projection, `qkv`: batch x tokens x
/// 3*heads*head_dim, its tokens mixed as `mixing` says; `bias` is the mixing's logit bias as a
/// tokens x tokens matrix. Returns batch x tokens x heads*head_dim, heads side by side, ready
/// for the output projection.
pub fn attention(
    qkv: &Tensor,
    heads: usize,
    scale: f32,
    mixing: Mixing,
    bias: Option<&[f32]>,
) -> candle_core::Result<Tensor> {
    qkv.apply_op1_no_bwd(&MultiHeadAttention {
        heads,
        scale,
        mixing,
        bias,
    })
}

/// One sequence of a packed causal attention: rows of the q|k|v at hand, after rows of an earlier
/// pass that come before them (a prompt prefix shared by many sequences, attended as keys and
/// values only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalSequence {
    /// First row and row count of the sequence's own tokens.
    pub start: usize,
    pub len: usize,
    /// First row and row count of its prefix in the prefix q|k|v.
    pub prefix_start: usize,
    pub prefix_len: usize,
}

/// Which rows of each sequence want an output.
#[derive(Clone, Copy, Debug)]
pub enum QueryRows<'a> {
    /// Every row: the output has the q|k|v's rows.
    All,
    /// One row per sequence, at this index within the sequence: the output has a row per sequence.
    One(&'a [usize]),
}

/// Causal multi-head attention over packed sequences: row `i` of a sequence attends to all of
/// its prefix and to its own rows `0..=i`. `qkv` is rows x 3*heads*head_dim (q|k|v side by side,
/// as the fused projection gives), `prefix` the same layout from an earlier pass. Returns the
/// query rows' outputs, rows x heads*head_dim, heads side by side.
pub fn causal_attention(
    qkv: &Tensor,
    prefix: &[f32],
    heads: usize,
    scale: f32,
    sequences: &[CausalSequence],
    queries: QueryRows,
) -> candle_core::Result<Tensor> {
    qkv.apply_op1_no_bwd(&CausalAttention {
        prefix,
        heads,
        scale,
        sequences,
        queries,
    })
}

/// A matrix transposed into a new contiguous one, tile by tile so that both sides stay in cache
/// (candle's strided copy goes element by element across the source's rows).
pub fn transpose(matrix: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, cols) = matrix.dims2()?;
    const TILE: usize = 32;
    let mut transposed = vec![0.0f32; rows * cols];
    with_f32_values(matrix, |source| {
        for row_block in (0..rows).step_by(TILE) {
            for col_block in (0..cols).step_by(TILE) {
                for row in row_block..(row_block + TILE).min(rows) {
                    for col in col_block..(col_block + TILE).min(cols) {
                        transposed[col * rows + row] = source[row * cols + col];
                    }
                }
            }
        }
    })?;
    Tensor::from_vec(transposed, (cols, rows), &Device::Cpu)
}

/// Runs `read` on a CPU f32 tensor's values (row-major), without copying a contiguous one.
pub fn with_f32_values<R>(
    tensor: &Tensor,
    read: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("needs a CPU tensor")
    };
    let values = contiguous_f32(storage, layout, "reading values")?;
    Ok(read(&values[..tensor.elem_count()]))
}

/// `xs * weight^T + bias`, then the epilogue, with the product on AMX in bf16 (f32 sums): `xs`
/// is rows x in, `bias` out.
pub fn linear_bf16(
    xs: &Tensor,
    weight: &amx::PackedWeight,
    bias: &Tensor,
    epilogue: Epilogue,
) -> candle_core::Result<Tensor> {
    xs.apply_op2_no_bwd(bias, &LinearBf16 { weight, epilogue })
}

struct LinearBf16<'a> {
    weight: &'a amx::PackedWeight,
    epilogue: Epilogue,
}

impl CustomOp2 for LinearBf16<'_> {
    fn name(&self) -> &'static str {
        "linear-bf16"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inner) = xs_layout.shape().dims2()?;
        let out = self.weight.outputs();
        if self.weight.inputs() != inner || bias_layout.shape().dims() != [out] {
            candle_core::bail!(
                "{}: {:?} x {}x{} + {:?} does not fit",
                self.name(),
                xs_layout.dims(),
                self.weight.inputs(),
                out,
                bias_layout.dims()
            );
        }
        let xs = contiguous_f32(xs, xs_layout, self.name())?;
        let bias = contiguous_f32(bias, bias_layout, self.name())?;
        let mut output = amx::linear(xs, self.weight);
        output
            .par_chunks_mut(out * MIN_ELEMENTS_PER_TASK.div_ceil(out.max(1)))
            .for_each(|chunk| {
                for row in chunk.chunks_exact_mut(out) {
                    add_in_place(row, bias);
                }
                if self.epilogue == Epilogue::QuickGelu {
                    quick_gelu_in_place(chunk);
                }
            });
        Ok((CpuStorage::F32(output), Shape::from((rows, out))))
    }
}

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        threads => Parallelism::Rayon(threads),
    }
}

struct Linear {
    epilogue: Epilogue,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight_t: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inner) = xs_layout.shape().dims2()?;
        let (weight_inner, out) = weight_layout.shape().dims2()?;
        if weight_inner != inner || bias_layout.shape().dims() != [out] {
            candle_core::bail!(
                "{}: {:?} x {:?} + {:?} does not fit",
                self.name(),
                xs_layout.dims(),
                weight_layout.dims(),
                bias_layout.dims()
            );
        }
        let xs = contiguous_f32(xs, xs_layout, self.name())?;
        let weight_t = contiguous_f32(weight_t, weight_layout, self.name())?;
        let bias = contiguous_f32(bias, bias_layout, self.name())?;
        let mut output = bias.repeat(rows);
        // SAFETY: the slices hold exactly rows x inner, inner x out and rows x out row-major
        // elements (checked above), and `output` is this function's own.
        unsafe {
            product(
                (rows, out, inner),
                Strided::rows(output.as_mut_ptr(), out),
                Output::AddTo,
                Strided::rows(xs.as_ptr(), inner),
                Strided::rows(weight_t.as_ptr(), out),
                parallelism(),
            );
        }
        if self.epilogue == Epilogue::QuickGelu {
            output
                .par_chunks_mut(MIN_ELEMENTS_PER_TASK)
                .for_each(quick_gelu_in_place);
        }
        Ok((CpuStorage::F32(output), Shape::from((rows, out))))
    }
}

/// Enough work per rayon task that splitting never costs more than it saves.
const MIN_ELEMENTS_PER_TASK: usize = 1 << 15;

struct MultiHeadAttention<'a> {
    heads: usize,
    scale: f32,
    mixing: Mixing,
    bias: Option<&'a [f32]>,
}

/// The output buffer, shared by the per-head tasks, each of which writes only its own
/// head's columns.
struct SharedOutput(*mut f32);

// SAFETY: tasks write disjoint elements (one head's columns of one window each).
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// # Safety
    /// `offset` must lie inside the buffer.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

impl CustomOp1 for MultiHeadAttention<'_> {
    fn name(&self) -> &'static str {
        "multi-head-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, tokens, qkv_width) = layout.shape().dims3()?;
        if self.heads == 0 || qkv_width % (3 * self.heads) != 0 {
            candle_core::bail!(
                "{}: a q|k|v width of {qkv_width} does not split into 3 x {} heads",
                self.name(),
                self.heads
            );
        }
        let maps = match self.mixing {
            Mixing::Identity => &[][..],
            Mixing::Softmax { maps: [], .. } => {
                candle_core::bail!("{}: a softmax mixing needs at least one map", self.name())
            }
            Mixing::Softmax { maps, .. } => maps,
        };
        if self.bias.is_some_and(|bias| bias.len() != tokens * tokens) {
            candle_core::bail!("{}: the logit bias is not {tokens} x {tokens}", self.name());
        }
        let qkv = contiguous_f32(storage, layout, self.name())?;
        let width = qkv_width / 3;
        let head_dim = width / self.heads;
        let mut output = vec![0.0f32; batch * tokens * width];
        let shared = SharedOutput(output.as_mut_ptr());
        // One score map, and a second to add each further map from.
        let score_maps = maps.len().min(2);
        (0..batch * self.heads).into_par_iter().for_each_init(
            || vec![0.0f32; score_maps * tokens * tokens],
            |scores, task| {
                let (window, head) = (task / self.heads, task % self.heads);
                let rows = &qkv[window * tokens * qkv_width..][..tokens * qkv_width];
                let column = head * head_dim;
                let [q, k, v] = [0, width, 2 * width].map(|part| rows[part + column..].as_ptr());
                let (sum, next) = scores.split_at_mut(maps.len().min(1) * tokens * tokens);
                let out = Strided::rows(
                    // SAFETY: this task's output block starts inside the buffer.
                    unsafe { shared.at(window * tokens * width + column) },
                    width,
                );
                // SAFETY: q, k and v point at `tokens` rows of `head_dim` values, `qkv_width`
                // apart, all inside `rows`; score maps are tokens x tokens; this task's output
                // block is its window's rows, its head's columns, which no other task writes.
                unsafe {
                    if maps.is_empty() {
                        copy_rows(out, v, qkv_width, tokens, head_dim);
                        return;
                    }
                    for (index, gram) in maps.iter().enumerate() {
                        let (a, b) = match gram {
                            Gram::QueryKey => (q, k),
                            Gram::QueryQuery | Gram::InputInput => (q, q),
                            Gram::KeyKey => (k, k),
                        };
                        let map = if index == 0 { &mut *sum } else { &mut *next };
                        gram_product(map, a, b, tokens, head_dim, qkv_width);
                        match self.bias {
                            Some(bias) => {
                                scale_and_add(map, self.scale, bias);
                                softmax_rows(map, tokens, 1.0);
                            }
                            None => softmax_rows(map, tokens, self.scale),
                        }
                        if index > 0 {
                            add_in_place(sum, next);
                        }
                    }
                    product(
                        (tokens, head_dim, tokens),
                        out,
                        Output::Overwrite,
                        Strided::rows(sum.as_ptr(), tokens),
                        Strided::rows(v, qkv_width),
                        Parallelism::None,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(output), Shape::from((batch, tokens, width))))
    }
}

struct CausalAttention<'a> {
    prefix: &'a [f32],
    heads: usize,
    scale: f32,
    sequences: &'a [CausalSequence],
    queries: QueryRows<'a>,
}

impl CustomOp1 for CausalAttention<'_> {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, qkv_width) = layout.shape().dims2()?;
        if self.heads == 0 || qkv_width % (3 * self.heads) != 0 {
            candle_core::bail!(
                "{}: a q|k|v width of {qkv_width} does not split into 3 x {} heads",
                self.name(),
                self.heads
            );
        }
        let prefix_rows = self.prefix.len() / qkv_width;
        let fits = self.sequences.iter().all(|s| {
            s.len > 0 && s.start + s.len <= rows && s.prefix_start + s.prefix_len <= prefix_rows
        });
        let queries_fit = match self.queries {
            QueryRows::All => true,
            QueryRows::One(rows) => {
                rows.len() == self.sequences.len()
                    && rows.iter().zip(self.sequences).all(|(&r, s)| r < s.len)
            }
        };
        if !fits || !queries_fit || !self.prefix.len().is_multiple_of(qkv_width) {
            candle_core::bail!("{}: a sequence lies outside its rows", self.name());
        }
        let qkv = contiguous_f32(storage, layout, self.name())?;
        let width = qkv_width / 3;
        let head_dim = width / self.heads;
        let out_rows = match self.queries {
            QueryRows::All => rows,
            QueryRows::One(_) => self.sequences.len(),
        };
        let mut output = vec![0.0f32; out_rows * width];
        let shared = SharedOutput(output.as_mut_ptr());
        let longest = self
            .sequences
            .iter()
            .map(|s| s.prefix_len + s.len)
            .max()
            .unwrap_or(0);
        (0..self.sequences.len() * self.heads)
            .into_par_iter()
            .for_each_init(
                || vec![0.0f32; longest],
                |scores, task| {
                    let (index, head) = (task / self.heads, task % self.heads);
                    let sequence = self.sequences[index];
                    let (first, last, out_row) = match self.queries {
                        QueryRows::All => (0, sequence.len, sequence.start),
                        QueryRows::One(rows) => (rows[index], rows[index] + 1, index),
                    };
                    let column = |part: usize| part * width + head * head_dim;
                    let own = |part| {
                        HeadRows::new(qkv, sequence.start, sequence.len, column(part), qkv_width)
                    };
                    let prefix = |part| {
                        let (start, len) = (sequence.prefix_start, sequence.prefix_len);
                        HeadRows::new(self.prefix, start, len, column(part), qkv_width)
                    };
                    let keys = [prefix(1), own(1)];
                    let values = [prefix(2), own(2)];
                    for (offset, row) in (first..last).enumerate() {
                        // SAFETY: this task writes only its query rows' columns of its head,
                        // which no other task writes, inside the output buffer.
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(
                                shared.at((out_row + offset) * width + head * head_dim),
                                head_dim,
                            )
                        };
                        attend_row(
                            own(0).row(row, head_dim),
                            &keys,
                            &values,
                            sequence.prefix_len + row + 1,
                            self.scale,
                            scores,
                            out,
                        );
                    }
                },
            );
        Ok((CpuStorage::F32(output), Shape::from((out_rows, width))))
    }
}

/// One head's columns of some rows of a q|k|v block.
#[derive(Clone, Copy)]
struct HeadRows<'a> {
    data: &'a [f32],
    offset: usize,
    stride: usize,
}

impl<'a> HeadRows<'a> {
    /// Rows `start..start + count` of `data` (rows `stride` apart), columns from `offset`.
    fn new(data: &'a [f32], start: usize, count: usize, offset: usize, stride: usize) -> Self {
        HeadRows {
            data: &data[start * stride..(start + count) * stride],
            offset,
            stride,
        }
    }

    fn len(&self) -> usize {
        self.data.len() / self.stride
    }

    fn row(&self, row: usize, head_dim: usize) -> &'a [f32] {
        &self.data[row * self.stride + self.offset..][..head_dim]
    }
}

/// `out = softmax(scale q K^T) V` over the first `count` rows of the keys and values taken in
/// order, block after block.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn attend_row(
    query: &[f32],
    keys: &[HeadRows],
    values: &[HeadRows],
    count: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let head_dim = query.len();
    let scores = &mut scores[..count];
    let rows = || {
        keys.iter()
            .zip(values)
            .flat_map(|(k, v)| (0..k.len()).map(move |r| (k.row(r, head_dim), v.row(r, head_dim))))
            .take(count)
    };
    let mut max = f32::NEG_INFINITY;
    for (score, (key, _)) in scores.iter_mut().zip(rows()) {
        *score = scale * dot(query, key);
        max = max.max(*score);
    }
    let mut sum = 0.0f32;
    for score in scores.iter_mut() {
        *score = exp(*score - max);
        sum += *score;
    }
    out.fill(0.0);
    for (&weight, (_, value)) in scores.iter().zip(rows()) {
        let weight = weight / sum;
        for (o, &v) in out.iter_mut().zip(value) {
            *o += weight * v;
        }
    }
}

/// A dot product with `LANES` partial sums, so that it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    tail + lanes.iter().sum::<f32>()
}

/// `scores = a b^T` for `tokens` rows of `head_dim` values, `row_stride` apart.
///
/// # Safety
/// `a` and `b` must each point at `tokens` such rows; `scores` holds tokens x tokens.
unsafe fn gram_product(
    scores: &mut [f32],
    a: *const f32,
    b: *const f32,
    tokens: usize,
    head_dim: usize,
    row_stride: usize,
) {
    debug_assert_eq!(scores.len(), tokens * tokens);
    product(
        (tokens, tokens, head_dim),
        Strided::rows(scores.as_mut_ptr(), tokens),
        Output::Overwrite,
        Strided::rows(a, row_stride),
        // b^T: its rows are b's columns.
        Strided {
            ptr: b,
            row_stride: 1,
            col_stride: row_stride,
        },
        Parallelism::None,
    );
}

/// A matrix in memory: element (i, j) at `ptr + i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
struct Strided<P> {
    ptr: P,
    row_stride: usize,
    col_stride: usize,
}

impl<P> Strided<P> {
    /// Rows `row_stride` apart, each contiguous.
    fn rows(ptr: P, row_stride: usize) -> Self {
        Strided {
            ptr,
            row_stride,
            col_stride: 1,
        }
    }
}

/// Whether a product replaces the destination or is added to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Overwrite,
    AddTo,
}

/// `dst (m x n) = [dst +] a (m x k) * b (k x n)`, with `(m, n, k)` = `dims`.
///
/// # Safety
/// Every element the three views address for these dimensions must be valid, and `dst`'s must
/// not overlap `a`'s or `b`'s or be accessed by anyone else meanwhile.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    output: Output,
    a: Strided<*const f32>,
    b: Strided<*const f32>,
    parallelism: Parallelism,
) {
    let add_to = output == Output::AddTo;
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.col_stride as isize,
        dst.row_stride as isize,
        add_to,
        a.ptr,
        a.col_stride as isize,
        a.row_stride as isize,
        b.ptr,
        b.col_stride as isize,
        b.row_stride as isize,
        // dst = alpha * dst + beta * a b; alpha is read only when adding to dst.
        if add_to { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: needs a contiguous f32 tensor"),
    }
}

/// Lanes of the partial maxima and sums: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_rows(data: &mut [f32], row_len: usize, scale: f32) {
    for row in data.chunks_exact_mut(row_len) {
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (max, &x) in lane_max.iter_mut().zip(chunk) {
                *max = max.max(x);
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&lane_max)
            .fold(f32::NEG_INFINITY, |max, &x| max.max(x));
        // scale > 0, so the largest scaled score is scale * max.
        let shift = scale * max;

        let mut lane_sum = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (sum, x) in lane_sum.iter_mut().zip(chunk) {
                *x = exp(scale * *x - shift);
                *sum += *x;
            }
        }
        let mut sum = 0.0f32;
        for x in chunks.into_remainder() {
            *x = exp(scale * *x - shift);
            sum += *x;
        }
        let inverse = 1.0 / (sum + lane_sum.iter().sum::<f32>());
        for x in row.iter_mut() {
            *x *= inverse;
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn quick_gelu_in_place(data: &mut [f32]) {
    for x in data {
        *x /= 1.0 + exp(-1.702 * *x);
    }
}

/// Copies `rows` rows of `len` values, `src_stride` apart, to `dst`'s rows.
///
/// # Safety
/// Both views must address valid, non-overlapping elements for these sizes.
unsafe fn copy_rows(
    dst: Strided<*mut f32>,
    src: *const f32,
    src_stride: usize,
    rows: usize,
    len: usize,
) {
    for row in 0..rows {
        std::ptr::copy_nonoverlapping(
            src.add(row * src_stride),
            dst.ptr.add(row * dst.row_stride),
            len,
        );
    }
}

/// The vector instructions the loops above run with on this CPU: multiversion's own run-time
/// choice among the same targets, so it cannot disagree with theirs.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
pub fn vector_extension() -> &'static str {
    multiversion::target::match_target! {
        "x86_64+avx512f" => "AVX-512",
        "x86_64+avx2" => "AVX2",
        _ => "neither AVX-512 nor AVX2",
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn scale_and_add(data: &mut [f32], scale: f32, addend: &[f32]) {
    for (x, &a) in data.iter_mut().zip(addend) {
        *x = scale * *x + a;
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn add_in_place(sum: &mut [f32], addend: &[f32]) {
    for (s, &a) in sum.iter_mut().zip(addend) {
        *s += a;
    }
}

/// e^x to within 2 ulp (Cephes' expf: Cody-Waite reduction by ln 2 and a degree-5 polynomial),
/// branch-free so that loops over it vectorise. Inputs are clamped to where e^x is a normal
/// f32, which softmax (x <= 0 after the shift) and sigmoid never notice.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HIGH is exact.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let poly = 1.987_569_1e-4_f32;
    let poly = poly * r + 1.398_2e-3;
    let poly = poly * r + 8.333_452e-3;
    let poly = poly * r + 4.166_579_6e-2;
    let poly = poly * r + 1.666_666_5e-1;
    let poly = poly * r + 0.5;
    let e_r = poly * r * r + r + 1.0;
    // n sits in the low bits of `shifted`; move it into the exponent field.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    let two_to_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    e_r * two_to_n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::uniform;

    fn relative_error(got: f32, want: f64) -> f64 {
        ((got as f64 - want) / want).abs()
    }

    #[test]
    fn the_vector_extension_reported_is_the_one_the_cpu_has() {
        #[cfg(target_arch = "x86_64")]
        let expected = {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match (avx2, is_x86_feature_detected!("avx512f")) {
                (true, true) => "AVX-512",
                (true, false) => "AVX2",
                (false, _) => "neither AVX-512 nor AVX2",
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let expected = "neither AVX-512 nor AVX2";
        assert_eq!(vector_extension(), expected);
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_range_used() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            worst = worst.max(relative_error(exp(x), (x as f64).exp()));
            x += 0.001_7;
        }
        assert!(
            worst < 2.5 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_instead_of_overflowing() {
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
    }

    /// Uniform values in [-spread, spread).
    fn pseudo_random(n: usize, spread: f32) -> Vec<f32> {
        uniform(n, 0x2545_f491_4f6c_dd1d)
            .into_iter()
            .map(|x| 2.0 * spread * x)
            .collect()
    }

    fn softmax_f64(row: &[f64]) -> Vec<f64> {
        let max = row.iter().copied().fold(f64::MIN, f64::max);
        let exps: Vec<f64> = row.iter().map(|&x| (x - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|e| e / sum).collect()
    }

    #[test]
    fn softmax_matches_f64_on_rows_longer_and_shorter_than_a_lane_block() {
        for row_len in [1, 5, 16, 197, 1000] {
            let rows = 7;
            let input = pseudo_random(rows * row_len, 30.0);
            let mut out = input.clone();
            softmax_rows(&mut out, row_len, 0.125);
            for (got, row) in out.chunks(row_len).zip(input.chunks(row_len)) {
                let scaled: Vec<f64> = row.iter().map(|&x| 0.125 * x as f64).collect();
                for (&g, &w) in got.iter().zip(&softmax_f64(&scaled)) {
                    assert!((g as f64 - w).abs() <= 1e-6 * w.max(1e-3), "{g} vs {w}");
                }
                let total: f32 = got.iter().sum();
                assert!((total - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn softmax_of_a_uniform_row_is_uniform_and_big_scores_do_not_overflow() {
        let mut rows = vec![1e30f32, 1e30, 1e30, 1e30, 3.0, 3.0, 3.0, 3.0];
        softmax_rows(&mut rows, 4, 1.0);
        assert_eq!(rows, vec![0.25f32; 8]);
    }

    fn tensor(values: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn quick_gelu_f64(v: f64) -> f64 {
        v / (1.0 + (-1.702 * v).exp())
    }

    #[test]
    fn linear_is_the_product_plus_the_bias_then_the_epilogue() {
        let (rows, inner, out) = (9, 13, 5);
        let xs = pseudo_random(rows * inner, 2.0);
        let weight = pseudo_random(inner * out, 0.5);
        let bias = pseudo_random(out, 1.0);
        for epilogue in [Epilogue::None, Epilogue::QuickGelu] {
            let got = linear(
                &tensor(xs.clone(), &[rows, inner]),
                &tensor(weight.clone(), &[inner, out]),
                &tensor(bias.clone(), &[out]),
                epilogue,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            for r in 0..rows {
                for c in 0..out {
                    let v = bias[c] as f64
                        + (0..inner)
                            .map(|i| xs[r * inner + i] as f64 * weight[i * out + c] as f64)
                            .sum::<f64>();
                    let want = match epilogue {
                        Epilogue::None => v,
                        Epilogue::QuickGelu => quick_gelu_f64(v),
                    };
                    let got = got[r * out + c] as f64;
                    assert!((got - want).abs() < 1e-5, "{epilogue:?} {r},{c}");
                }
            }
        }
    }

    #[test]
    fn linear_leaves_its_inputs_alone_even_for_one_row() {
        let bias = tensor(vec![1.0, 2.0], &[2]);
        let out = linear(
            &tensor(vec![3.0], &[1, 1]),
            &tensor(vec![10.0, 20.0], &[1, 2]),
            &bias,
            Epilogue::None,
        )
        .unwrap();
        assert_eq!(out.to_vec2::<f32>().unwrap(), [[31.0, 62.0]]);
        assert_eq!(bias.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn linear_refuses_shapes_that_do_not_fit() {
        let result = linear(
            &tensor(vec![0.0; 8], &[2, 4]),
            &tensor(vec![0.0; 15], &[5, 3]),
            &tensor(vec![0.0; 3], &[3]),
            Epilogue::None,
        );
        assert!(result.is_err());
    }

    #[test]
    fn quick_gelu_matches_the_formula() {
        let mut values = pseudo_random(3 * MIN_ELEMENTS_PER_TASK + 37, 12.0);
        let input = values.clone();
        quick_gelu_in_place(&mut values);
        for (&got, &x) in values.iter().zip(&input) {
            let want = quick_gelu_f64(x as f64);
            assert!(
                (got as f64 - want).abs() <= 1e-6 * want.abs().max(1e-2),
                "{got} vs {want}"
            );
        }
    }

    /// Attention the slow way, in f64, from the q|k|v layout.
    fn attention_f64(
        qkv: &[f32],
        (batch, tokens, heads, head_dim): (usize, usize, usize, usize),
        scale: f64,
        mixing: Mixing,
        bias: Option<&[f32]>,
    ) -> Vec<f64> {
        let width = heads * head_dim;
        let at = |b: usize, t: usize, part: usize, h: usize, d: usize| {
            qkv[(b * tokens + t) * 3 * width + part * width + h * head_dim + d] as f64
        };
        let mut out = vec![0.0; batch * tokens * width];
        for b in 0..batch {
            for h in 0..heads {
                let map = |x: usize, y: usize| -> Vec<Vec<f64>> {
                    (0..tokens)
                        .map(|i| {
                            let scores: Vec<f64> = (0..tokens)
                                .map(|j| {
                                    let product = (0..head_dim)
                                        .map(|d| at(b, i, x, h, d) * at(b, j, y, h, d))
                                        .sum::<f64>();
                                    scale * product
                                        + bias.map_or(0.0, |bias| bias[i * tokens + j] as f64)
                                })
                                .collect();
                            softmax_f64(&scores)
                        })
                        .collect()
                };
                let weights: Vec<Vec<f64>> = match mixing {
                    Mixing::Identity => (0..tokens)
                        .map(|i| (0..tokens).map(|j| f64::from(i == j)).collect())
                        .collect(),
                    Mixing::Softmax { maps, .. } => {
                        let mut sum = vec![vec![0.0; tokens]; tokens];
                        for gram in maps {
                            let (x, y) = match gram {
                                Gram::QueryKey => (0, 1),
                                Gram::QueryQuery | Gram::InputInput => (0, 0),
                                Gram::KeyKey => (1, 1),
                            };
                            for (sum_row, row) in sum.iter_mut().zip(map(x, y)) {
                                for (s, w) in sum_row.iter_mut().zip(row) {
                                    *s += w;
                                }
                            }
                        }
                        sum
                    }
                };
                for i in 0..tokens {
                    for d in 0..head_dim {
                        out[(b * tokens + i) * width + h * head_dim + d] =
                            (0..tokens).map(|j| weights[i][j] * at(b, j, 2, h, d)).sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition_for_every_mixing() {
        let dims @ (batch, tokens, heads, head_dim) = (3, 11, 4, 8);
        let qkv = pseudo_random(batch * tokens * 3 * heads * head_dim, 1.5);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let bias = pseudo_random(tokens * tokens, 2.0);
        let softmax = |maps| Mixing::Softmax { maps, bias: None };
        let cases = [
            (softmax(&[Gram::QueryKey]), None),
            (softmax(&[Gram::QueryQuery, Gram::KeyKey]), None),
            (softmax(&[Gram::KeyKey]), Some(bias.as_slice())),
            (softmax(&[Gram::QueryQuery, Gram::KeyKey]), Some(&bias)),
            (Mixing::Identity, None),
        ];
        for (mixing, bias) in cases {
            let got = attention(
                &tensor(qkv.clone(), &[batch, tokens, 3 * heads * head_dim]),
                heads,
                scale,
                mixing,
                bias,
            )
            .unwrap();
            assert_eq!(got.dims(), [batch, tokens, heads * head_dim]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = attention_f64(&qkv, dims, scale as f64, mixing, bias);
            for (&g, &w) in got.iter().zip(&want) {
                assert!(
                    (g as f64 - w).abs() < 1e-5,
                    "{mixing:?} bias {}: {g} vs {w}",
                    bias.is_some()
                );
            }
        }
    }

    #[test]
    fn attention_refuses_what_it_cannot_compute() {
        let qkv = tensor(vec![0.0; 2 * 3 * 10], &[1, 2, 30]);
        let clip = Mixing::Softmax {
            maps: &[Gram::QueryKey],
            bias: None,
        };
        assert!(attention(&qkv, 4, 1.0, clip, None).is_err(), "heads");
        let qkv = tensor(vec![0.0; 2 * 3 * 8], &[1, 2, 24]);
        assert!(attention(&qkv, 4, 1.0, clip, None).is_ok());
        assert!(
            attention(&qkv, 4, 1.0, clip, Some(&[0.0; 3])).is_err(),
            "bias size"
        );
        let no_maps = Mixing::Softmax {
            maps: &[],
            bias: None,
        };
        assert!(attention(&qkv, 4, 1.0, no_maps, None).is_err(), "no maps");
    }

    /// Causal attention the slow way, in f64: each sequence's rows after its prefix rows.
    fn causal_f64(
        qkv: &[f32],
        prefix: &[f32],
        heads: usize,
        head_dim: usize,
        scale: f64,
        sequence: &CausalSequence,
        row: usize,
    ) -> Vec<f64> {
        let width = heads * head_dim;
        let at = |data: &[f32], r: usize, part: usize, h: usize, d: usize| {
            data[r * 3 * width + part * width + h * head_dim + d] as f64
        };
        let keys: Vec<(&[f32], usize)> = (0..sequence.prefix_len)
            .map(|r| (prefix, sequence.prefix_start + r))
            .chain((0..=row).map(|r| (qkv, sequence.start + r)))
            .collect();
        let mut out = vec![0.0; width];
        for h in 0..heads {
            let scores: Vec<f64> = keys
                .iter()
                .map(|&(data, r)| {
                    scale
                        * (0..head_dim)
                            .map(|d| at(qkv, sequence.start + row, 0, h, d) * at(data, r, 1, h, d))
                            .sum::<f64>()
                })
                .collect();
            let weights = softmax_f64(&scores);
            for d in 0..head_dim {
                out[h * head_dim + d] = keys
                    .iter()
                    .zip(&weights)
                    .map(|(&(data, r), w)| w * at(data, r, 2, h, d))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn causal_attention_sees_its_prefix_and_its_own_earlier_rows() {
        let (heads, head_dim) = (2, 8);
        let width3 = 3 * heads * head_dim;
        let qkv = pseudo_random(9 * width3, 1.5);
        let prefix = pseudo_random(5 * width3, 1.5);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let sequences = [
            CausalSequence {
                start: 0,
                len: 4,
                prefix_start: 0,
                prefix_len: 3,
            },
            CausalSequence {
                start: 4,
                len: 2,
                prefix_start: 3,
                prefix_len: 2,
            },
            CausalSequence {
                start: 6,
                len: 3,
                prefix_start: 0,
                prefix_len: 0,
            },
        ];
        let input = tensor(qkv.clone(), &[9, width3]);
        let all = causal_attention(&input, &prefix, heads, scale, &sequences, QueryRows::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let ends = [3, 0, 2];
        let chosen = causal_attention(
            &input,
            &prefix,
            heads,
            scale,
            &sequences,
            QueryRows::One(&ends),
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
        for (index, sequence) in sequences.iter().enumerate() {
            for row in 0..sequence.len {
                let want = causal_f64(&qkv, &prefix, heads, head_dim, scale as f64, sequence, row);
                for (&got, want) in all[sequence.start + row].iter().zip(&want) {
                    assert!(
                        (got as f64 - want).abs() < 1e-5,
                        "{index} {row}: {got} vs {want}"
                    );
                }
                if row == ends[index] {
                    assert_eq!(chosen[index], all[sequence.start + row]);
                }
            }
        }
        let outside = [CausalSequence {
            start: 8,
            len: 2,
            prefix_start: 0,
            prefix_len: 0,
        }];
        assert!(causal_attention(&input, &prefix, heads, scale, &outside, QueryRows::All).is_err());
    }

    #[test]
    fn transpose_swaps_rows_and_columns_across_tiles() {
        let (rows, cols) = (37, 70);
        let values = pseudo_random(rows * cols, 1.0);
        let transposed = transpose(&tensor(values.clone(), &[rows, cols]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(transposed.len(), cols);
        for (c, column) in transposed.iter().enumerate() {
            for (r, &value) in column.iter().enumerate() {
                assert_eq!(value, values[r * cols + c]);
            }
        }
    }

    #[test]
    fn only_cpu_f32_takes_these_kernels() {
        assert!(applies(
            &Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()
        ));
        assert!(!applies(
            &Tensor::zeros(2, DType::F16, &Device::Cpu).unwrap()
        ));
    }
}
