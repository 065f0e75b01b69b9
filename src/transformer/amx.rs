//! Matrix products in bf16 with f32 accumulation on Intel's AMX tiles (`TDPBF16PS`, Sapphire
//! Rapids and later), for `--dtype bf16` on the CPU: what PyTorch's CPU autocast does for linear
//! layers. Detected at run time; the AMX intrinsics are nightly-only, so the few instructions
//! are written with `asm!`.
//!
//! Layout: the weight is packed once, at load, into 16 x 32 tiles in AMX's pair-interleaved
//! ("VNNI") order; each product converts its activations into 16 x 32 tiles too, so every tile
//! load reads 1 KiB of consecutive memory. A block of 32 x 32 outputs keeps four accumulator
//! tiles, fed by two activation tiles and two weight tiles per 32-wide step of the inner
//! dimension. Sizes are padded to whole tiles with zeros.

use std::sync::OnceLock;

use multiversion::multiversion;
use rayon::prelude::*;

/// Rows and bf16 columns of an input tile; an accumulator tile is 16 x 16 f32.
const TILE_ROWS: usize = 16;
const TILE_DEPTH: usize = 32;
/// bf16 values in one input tile (1 KiB).
const TILE_VALUES: usize = TILE_ROWS * TILE_DEPTH;
/// Outputs per block side: two tiles.
const BLOCK: usize = 2 * TILE_ROWS;

/// Whether this CPU and OS run AMX bf16 products (checked once; asks Linux for the tile state).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    // SAFETY: cpuid exists on every x86-64; xgetbv only once cpuid says the OS enabled XSAVE.
    unsafe {
        let leaf7 = __cpuid_count(7, 0);
        let amx_bf16 = leaf7.edx & (1 << 22) != 0;
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
        if !(amx_bf16 && amx_tile && osxsave) {
            return false;
        }
        // XTILECFG and XTILEDATA state enabled by the OS.
        if _xgetbv(0) & (0b11 << 17) != 0b11 << 17 {
            return false;
        }
    }
    // Linux hands out the 8 KiB of tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM
    // for XFEATURE_XTILEDATA); it is granted to the whole process.
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let result: i64;
    // SAFETY: a plain system call that changes nothing but this permission.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    result == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN); branch-free, so that loops over it
/// vectorise.
#[inline(always)]
fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    if value.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn to_bf16(packed: &mut [u16], values: &[f32]) {
    for (packed, &value) in packed.iter_mut().zip(values) {
        *packed = bf16_bits(value);
    }
}

/// A weight (out x in, as checkpoints store it) packed for [`linear`].
#[derive(Debug, Clone)]
pub struct PackedWeight {
    /// Tile (column tile t, depth step d) at `(t * depth_steps + d) * TILE_VALUES`; within
    /// it, row r holds depth pairs 2r, 2r + 1 of 16 output columns, pair by pair.
    tiles: Vec<u16>,
    outputs: usize,
    inputs: usize,
}

impl PackedWeight {
    pub fn new(weight: &[f32], outputs: usize, inputs: usize) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight size");
        let (column_tiles, steps) = (padded_outputs(outputs) / TILE_ROWS, depth_steps(inputs));
        let mut tiles = vec![0u16; column_tiles * steps * TILE_VALUES];
        for (tile_index, tile) in tiles.chunks_exact_mut(TILE_VALUES).enumerate() {
            let (column_tile, step) = (tile_index / steps, tile_index % steps);
            for (position, value) in tile.iter_mut().enumerate() {
                let (row, rest) = (position / TILE_DEPTH, position % TILE_DEPTH);
                let (column, half) = (rest / 2, rest % 2);
                let depth = step * TILE_DEPTH + 2 * row + half;
                let output = column_tile * TILE_ROWS + column;
                if depth < inputs && output < outputs {
                    *value = bf16_bits(weight[output * inputs + depth]);
                }
            }
        }
        PackedWeight {
            tiles,
            outputs,
            inputs,
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }
}

fn depth_steps(inputs: usize) -> usize {
    inputs.div_ceil(TILE_DEPTH)
}

fn padded_outputs(outputs: usize) -> usize {
    outputs.div_ceil(BLOCK) * BLOCK
}

/// Depth steps per pass over the outputs: a 256-deep slice of the weight for every output
/// column (1.5 MiB for 3072 columns) stays in L2 while each 32-row band of activations (16 KiB)
/// sits in L1, whatever the number of rows.
const STEPS_PER_PASS: usize = 8;

/// `xs (rows x inputs) * weight^T`, rows x outputs, products in bf16, sums in f32. Only where
/// [`available`] says so.
pub fn linear(xs: &[f32], weight: &PackedWeight) -> Vec<f32> {
    assert!(available(), "AMX products asked of a CPU without them");
    let (inputs, outputs) = (weight.inputs, weight.outputs);
    assert!(inputs > 0 && xs.len().is_multiple_of(inputs), "input width");
    let rows = xs.len() / inputs;
    if rows == 0 || outputs == 0 {
        return vec![0.0; rows * outputs];
    }
    let steps = depth_steps(inputs);
    let row_blocks = rows.div_ceil(BLOCK);
    let columns = padded_outputs(outputs);
    let column_blocks = columns / BLOCK;
    let per_task = column_blocks.div_ceil(rayon::current_num_threads().max(1));
    // Whole blocks only: rows and columns padded to 32, cut back at the end. Every value is
    // written by the product (the first pass starts from zeroed tiles), so the buffer is not
    // cleared first.
    let padded_len = row_blocks * BLOCK * columns;
    let mut padded: Vec<f32> = Vec::with_capacity(padded_len);
    let shared = SharedOutput(padded.as_mut_ptr());
    // Taken out, not borrowed: a rayon worker waiting below may run another product on this
    // thread, which then finds an empty buffer instead of a borrowed one.
    let mut tiles = ACTIVATION_TILES.take();
    activation_tiles(xs, rows, inputs, steps, 2 * row_blocks, &mut tiles);
    (0..column_blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let blocks = task * per_task..((task + 1) * per_task).min(column_blocks);
            // SAFETY: AMX is available (asserted above); each task writes only its own column
            // blocks of `padded`, whose capacity holds every block.
            unsafe {
                column_blocks_product(&tiles, weight, steps, row_blocks, columns, blocks, &shared);
            }
        });
    ACTIVATION_TILES.set(tiles);
    // SAFETY: the products above wrote all `padded_len` values.
    unsafe { padded.set_len(padded_len) };
    padded.truncate(rows * columns);
    if columns == outputs {
        return padded;
    }
    padded
        .chunks_exact(columns)
        .flat_map(|row| &row[..outputs])
        .copied()
        .collect()
}

thread_local! {
    /// The activations of the last product on this thread, as tiles: kept, so that every
    /// product does not fault in fresh pages for them.
    static ACTIVATION_TILES: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `xs` (rows x inputs) as `row_tiles` x `steps` bf16 tiles, tile (r, d) at
/// `(r * steps + d) * TILE_VALUES`; padding rows and depths are zero.
fn activation_tiles(
    xs: &[f32],
    rows: usize,
    inputs: usize,
    steps: usize,
    row_tiles: usize,
    tiles: &mut Vec<u16>,
) {
    let len = row_tiles * steps * TILE_VALUES;
    if tiles.len() < len {
        tiles.resize(len, 0);
    }
    tiles[..len]
        .par_chunks_mut(steps * TILE_VALUES)
        .enumerate()
        .for_each(|(row_tile, band)| {
            for row in 0..TILE_ROWS {
                let source_row = row_tile * TILE_ROWS + row;
                for step in 0..steps {
                    let tile = &mut band[step * TILE_VALUES + row * TILE_DEPTH..][..TILE_DEPTH];
                    let depth = step * TILE_DEPTH;
                    let filled = if source_row < rows {
                        let source =
                            &xs[source_row * inputs + depth..][..(inputs - depth).min(TILE_DEPTH)];
                        to_bf16(tile, source);
                        source.len()
                    } else {
                        0
                    };
                    tile[filled..].fill(0);
                }
            }
        });
}

struct SharedOutput(*mut f32);

// SAFETY: tasks write disjoint column blocks.
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

/// The AMX tile configuration: palette 1, tiles 0-7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Accumulates `column_blocks` of the product into `out` (row_blocks * 32 rows of `columns`).
///
/// # Safety
/// AMX must be available; `activations` holds 2 * row_blocks row tiles of `steps` steps,
/// `weight` every column tile, and `out` every block, these columns written by no one else.
#[cfg(target_arch = "x86_64")]
unsafe fn column_blocks_product(
    activations: &[u16],
    weight: &PackedWeight,
    steps: usize,
    row_blocks: usize,
    columns: usize,
    column_blocks: std::ops::Range<usize>,
    out: &SharedOutput,
) {
    use std::arch::asm;
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    config.bytes_per_row[..8].fill(64);
    config.rows[..8].fill(TILE_ROWS as u8);
    asm!("ldtilecfg [{}]", in(reg) &config, options(nostack));
    let tile_stride = 64usize;
    let out_stride = columns * 4;
    for first_step in (0..steps).step_by(STEPS_PER_PASS) {
        let last_step = (first_step + STEPS_PER_PASS).min(steps);
        for row_block in 0..row_blocks {
            let top = activations
                .as_ptr()
                .add(2 * row_block * steps * TILE_VALUES);
            let bottom = top.add(steps * TILE_VALUES);
            for column_block in column_blocks.clone() {
                let left = weight
                    .tiles
                    .as_ptr()
                    .add(2 * column_block * steps * TILE_VALUES);
                let right = left.add(steps * TILE_VALUES);
                let target = out
                    .0
                    .add(row_block * BLOCK * columns + column_block * BLOCK);
                let (upper_right, lower_left) =
                    (target.add(TILE_ROWS), target.add(TILE_ROWS * columns));
                let lower_right = lower_left.add(TILE_ROWS);
                if first_step == 0 {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                } else {
                    asm!(
                        "tileloadd tmm0, [{a} + {stride}*1]",
                        "tileloadd tmm1, [{b} + {stride}*1]",
                        "tileloadd tmm2, [{c} + {stride}*1]",
                        "tileloadd tmm3, [{d} + {stride}*1]",
                        a = in(reg) target,
                        b = in(reg) upper_right,
                        c = in(reg) lower_left,
                        d = in(reg) lower_right,
                        stride = in(reg) out_stride,
                        options(nostack, readonly)
                    );
                }
                for step in first_step..last_step {
                    let offset = step * TILE_VALUES;
                    asm!(
                        "tileloadd tmm4, [{top} + {stride}*1]",
                        "tileloadd tmm6, [{left} + {stride}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{right} + {stride}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{bottom} + {stride}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        top = in(reg) top.add(offset),
                        bottom = in(reg) bottom.add(offset),
                        left = in(reg) left.add(offset),
                        right = in(reg) right.add(offset),
                        stride = in(reg) tile_stride,
                        options(nostack, readonly)
                    );
                }
                asm!(
                    "tilestored [{a} + {stride}*1], tmm0",
                    "tilestored [{b} + {stride}*1], tmm1",
                    "tilestored [{c} + {stride}*1], tmm2",
                    "tilestored [{d} + {stride}*1], tmm3",
                    a = in(reg) target,
                    b = in(reg) upper_right,
                    c = in(reg) lower_left,
                    d = in(reg) lower_right,
                    stride = in(reg) out_stride,
                    options(nostack)
                );
            }
        }
    }
    asm!("tilerelease", options(nostack));
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn column_blocks_product(
    _: &[u16],
    _: &PackedWeight,
    _: usize,
    _: usize,
    _: usize,
    _: std::ops::Range<usize>,
    _: &SharedOutput,
) {
    unreachable!("AMX is x86-64 only")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::uniform;

    fn bf16_value(value: f32) -> f64 {
        f32::from_bits((bf16_bits(value) as u32) << 16) as f64
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even one, 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    }

    /// Sizes that fill no tile evenly, in an order where smaller products reuse a larger one's
    /// tile buffer: the products must equal the bf16-rounded inputs' exact products, summed in
    /// f64, to f32 rounding.
    #[test]
    fn products_equal_the_bf16_inputs_exact_products() {
        if !available() {
            eprintln!("no AMX on this CPU: nothing to check");
            return;
        }
        for (rows, inputs, outputs) in [
            (1, 1, 1),
            (37, 70, 45),
            (64, 64, 96),
            (5, 300, 33),
            (40, 600, 64),
        ] {
            let xs = uniform(rows * inputs, 3);
            let weight = uniform(outputs * inputs, 4);
            let packed = PackedWeight::new(&weight, outputs, inputs);
            let out = linear(&xs, &packed);
            assert_eq!(out.len(), rows * outputs);
            for r in 0..rows {
                for o in 0..outputs {
                    let want: f64 = (0..inputs)
                        .map(|i| {
                            bf16_value(xs[r * inputs + i]) * bf16_value(weight[o * inputs + i])
                        })
                        .sum();
                    let got = out[r * outputs + o] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{rows}x{inputs}x{outputs} at {r},{o}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
