//! JPEG decoding at a DCT scale through libjpeg, as `mozjpeg-sys` bundles it
//! (libjpeg-turbo's C code, built by the `cc` crate), and with `libjpeg-simd` encoding.
//!
//! Without SIMD (the default build: no cmake, no nasm) its Huffman decoding is faster
//! than `jpeg-decoder`'s, which is most of a scaled decode; its plain-C 1/2 and 1/4
//! inverse DCTs are replaced by ours (`idct`), which read only the coefficients the
//! reduced output is made of. Encoding then stays with `jpeg-encoder`, whose SIMD DCT
//! makes it twice as fast as this C one. With libjpeg-turbo's SIMD assembly
//! (`libjpeg-simd`, nasm) libjpeg decodes every JPEG, whole too, and encodes them:
//! faster than zune-jpeg and three times as fast as `jpeg-encoder`; its SIMD reduced
//! IDCTs are kept, faster than ours. Figures in `crates/bench/PERF.md`. Colour: CMYK and
//! YCCK come back as the stored (Adobe-inverted) inks.
//!
//! libjpeg reports a fatal error by calling `error_exit`, which must not return: ours
//! unwinds (the C code is compiled with `-fexceptions` by `mozjpeg-sys`'s `unwinding`
//! feature) to a `catch_unwind` here, which turns it into a [`LibjpegError`]. Warnings
//! (corrupt data that libjpeg would paper over) are made errors too, so that the Rust
//! decoders judge such files, as in the plain build.

use std::os::raw::{c_int, c_long, c_ulong};
use std::panic::{self, AssertUnwindSafe};

use mozjpeg_sys as ffi;

use crate::colour;
use crate::jpeg::{self, Scale, ScaledJpeg};
use crate::limits::Limits;
use crate::raster::{Layout, Raster};

/// Why libjpeg did not decode an image.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LibjpegError {
    /// libjpeg's own error (or warning), by its message code (`jerror.h`).
    #[error("libjpeg stopped with message code {0}")]
    Library(c_int),
    #[error("the decoded image would pass the allocation limit")]
    TooLarge,
    #[error("libjpeg decoded {got:?} where {want:?} was asked for")]
    Size { want: (u32, u32), got: (u32, u32) },
    #[error("libjpeg decoded {got} of {want} rows")]
    Rows { want: u32, got: u32 },
}

/// The payload our `error_exit` unwinds with: the message code.
struct Failure(c_int);

/// libjpeg's fatal-error hook: unwinds to the `catch_unwind` in [`guarded`].
unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with its own struct, whose `err` is our live manager.
    let code = unsafe { (*cinfo.err).msg_code };
    // `resume_unwind`, not `panic!`: no panic hook, so nothing is printed.
    panic::resume_unwind(Box::new(Failure(code)));
}

/// libjpeg's message hook: a warning (level −1, corrupt data) is an error for us; trace
/// messages (level ≥ 0) are dropped rather than printed on stderr.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    if level < 0 {
        // SAFETY: as in `error_exit`, which it forwards to.
        unsafe { error_exit(cinfo) }
    }
}

/// An error manager with our two hooks.
fn error_manager() -> Box<ffi::jpeg_error_mgr> {
    // SAFETY: `jpeg_error_mgr` is plain data (integers, pointers, `Option` of functions),
    // for which all zeroes is valid; `jpeg_std_error` then fills every field in.
    let mut err: Box<ffi::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: `err` is a live, exclusive manager.
    unsafe { ffi::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// Runs `f` (which calls libjpeg), turning libjpeg's unwinding error into a
/// [`LibjpegError`]. Any other panic is not ours to swallow and goes on.
fn guarded<T>(f: impl FnOnce() -> Result<T, LibjpegError>) -> Result<T, LibjpegError> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<Failure>() {
            Ok(failure) => Err(LibjpegError::Library(failure.0)),
            Err(other) => panic::resume_unwind(other),
        },
    }
}

/// A decompressor, destroyed (its memory freed) when dropped, error or not.
struct Decompressor {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    /// Referred to by `cinfo.common.err`: boxed so that it does not move.
    _err: Box<ffi::jpeg_error_mgr>,
}

impl Decompressor {
    fn new() -> Decompressor {
        let mut err = error_manager();
        // SAFETY: all zeroes is the state `jpeg_create_decompress` expects (it sets every
        // field it reads), and `err` outlives `cinfo` (both are fields of `Self`).
        let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
        cinfo.common.err = &mut *err;
        // SAFETY: `cinfo` is live and exclusive; an allocation failure unwinds through
        // `error_exit` to the caller's `guarded`.
        unsafe {
            ffi::jpeg_create_decompress(&mut *cinfo);
            // The master record exists from creation on: the hook is read when the
            // output pass starts.
            jpeg_set_idct_method_selector(&mut *cinfo, Some(select_idct));
        }
        Decompressor { cinfo, _err: err }
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: `cinfo` was created by `jpeg_create_decompress`; destroying it is valid
        // in any state, after an error too.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// A compressor writing to a buffer that libjpeg allocates (`jpeg_mem_dest`), both freed
/// when dropped, error or not.
#[cfg(any(feature = "libjpeg-simd", test))]
struct Compressor {
    cinfo: Box<ffi::jpeg_compress_struct>,
    /// Referred to by `cinfo.common.err`: boxed so that it does not move.
    _err: Box<ffi::jpeg_error_mgr>,
    /// The output buffer and its length, which libjpeg updates through pointers to them
    /// (boxed so that they do not move); the buffer is `malloc`'d, null until started.
    out: Box<(*mut u8, c_ulong)>,
}

#[cfg(any(feature = "libjpeg-simd", test))]
extern "C" {
    /// The C library's, for the buffer `jpeg_mem_dest` allocates.
    fn free(ptr: *mut std::ffi::c_void);
}

#[cfg(any(feature = "libjpeg-simd", test))]
impl Compressor {
    fn new() -> Compressor {
        let mut err = error_manager();
        // SAFETY: as for the decompressor: all zeroes is the state `jpeg_create_compress`
        // expects, and `err` outlives `cinfo`.
        let mut cinfo: Box<ffi::jpeg_compress_struct> = Box::new(unsafe { std::mem::zeroed() });
        cinfo.common.err = &mut *err;
        // SAFETY: `cinfo` is live and exclusive.
        unsafe { ffi::jpeg_create_compress(&mut *cinfo) };
        Compressor {
            cinfo,
            _err: err,
            out: Box::new((std::ptr::null_mut(), 0)),
        }
    }
}

#[cfg(any(feature = "libjpeg-simd", test))]
impl Drop for Compressor {
    fn drop(&mut self) {
        // SAFETY: `cinfo` was created by `jpeg_create_compress`; the buffer, if any, is
        // the one `jpeg_mem_dest` allocated last (it frees those it outgrows).
        unsafe {
            ffi::jpeg_destroy_compress(&mut self.cinfo);
            if !self.out.0.is_null() {
                free(self.out.0.cast());
            }
        }
    }
}

/// Encodes an RGB or grey raster as a baseline JPEG with standard Huffman tables and
/// libjpeg's standard quantisation tables, with the chroma subsampling `jpeg-encoder`
/// would use (4:2:0 under quality 90, else 4:4:4). Only with the SIMD assembly, whose
/// colour conversion, DCT and Huffman coding make it faster than `jpeg-encoder`; the
/// plain C encoder is about twice as slow (`crates/bench/PERF.md`).
#[cfg(any(feature = "libjpeg-simd", test))]
pub(crate) fn encode(raster: &Raster, quality: u8) -> Result<Vec<u8>, LibjpegError> {
    guarded(|| encode_unguarded(raster, quality))
}

#[cfg(any(feature = "libjpeg-simd", test))]
fn encode_unguarded(raster: &Raster, quality: u8) -> Result<Vec<u8>, LibjpegError> {
    let (space, components) = match raster.layout {
        Layout::Luma => (ffi::J_COLOR_SPACE::JCS_GRAYSCALE, 1),
        Layout::Rgb => (ffi::J_COLOR_SPACE::JCS_RGB, 3),
        Layout::LumaAlpha | Layout::Rgba => unreachable!("alpha is flattened before encoding"),
    };
    let stride = (raster.width as usize) * components;
    if stride == 0 || raster.data.len() != stride * raster.height as usize {
        return Err(LibjpegError::Size {
            want: (raster.width, raster.height),
            got: (raster.width, raster.height),
        });
    }
    let mut c = Compressor::new();
    let out = &mut *c.out;
    let cinfo = &mut *c.cinfo;
    cinfo.image_width = raster.width;
    cinfo.image_height = raster.height;
    cinfo.input_components = c_int::try_from(components).expect("1 or 3");
    cinfo.in_color_space = space;
    let rows: Vec<*const u8> = raster
        .data
        .chunks_exact(stride)
        .map(<[u8]>::as_ptr)
        .collect();
    // SAFETY: `cinfo` is created and `out` outlives it (both in `c`); every row pointer
    // addresses `stride` bytes of the raster, which libjpeg reads and never writes.
    unsafe {
        // libjpeg-turbo's defaults (baseline, no trellis quantisation, standard tables),
        // not mozjpeg's slow search for the smallest file.
        ffi::jpeg_c_set_int_param(
            cinfo,
            ffi::J_INT_PARAM::JINT_COMPRESS_PROFILE,
            ffi::JCP_FASTEST as c_int,
        );
        ffi::jpeg_set_defaults(cinfo);
        ffi::jpeg_set_quality(cinfo, c_int::from(quality), 1);
        if space == ffi::J_COLOR_SPACE::JCS_RGB && quality >= 90 {
            for i in 0..3 {
                let component = &mut *cinfo.comp_info.add(i);
                component.h_samp_factor = 1;
                component.v_samp_factor = 1;
            }
        }
        ffi::jpeg_mem_dest(cinfo, &mut out.0, &mut out.1);
        ffi::jpeg_start_compress(cinfo, 1);
        while cinfo.next_scanline < cinfo.image_height {
            let done = cinfo.next_scanline;
            let written = ffi::jpeg_write_scanlines(
                cinfo,
                rows.as_ptr().add(done as usize),
                cinfo.image_height - done,
            );
            if written == 0 {
                return Err(LibjpegError::Rows {
                    want: cinfo.image_height,
                    got: done,
                });
            }
        }
        ffi::jpeg_finish_compress(cinfo);
        let len = usize::try_from(out.1).map_err(|_| LibjpegError::TooLarge)?;
        Ok(std::slice::from_raw_parts(out.0, len).to_vec())
    }
}

/// libjpeg's inverse-DCT routine: one block's coefficients (natural order) to `N` rows of
/// `N` samples at column `output_col` of `output_buf`.
type IdctMethod = unsafe extern "C-unwind" fn(
    cinfo: *mut ffi::jpeg_decompress_struct,
    compptr: *mut ffi::jpeg_component_info,
    coef_block: *mut ffi::JCOEF,
    output_buf: *mut *mut u8,
    output_col: ffi::JDIMENSION,
);

/// The hook libjpeg (as `mozjpeg-sys` bundles it) calls for each component when an
/// output pass starts, with the routine it chose, which the hook may replace.
type IdctSelector = unsafe extern "C-unwind" fn(
    cinfo: *mut ffi::jpeg_decompress_struct,
    compptr: *mut ffi::jpeg_component_info,
    method: *mut Option<IdctMethod>,
    category: *mut c_int,
);

// Declared here rather than taken from `mozjpeg-sys`, whose binding of the selector gives
// it a compressor; the two routines are libjpeg's own, compared by address only.
extern "C-unwind" {
    fn jpeg_set_idct_method_selector(
        cinfo: *mut ffi::jpeg_decompress_struct,
        selector: Option<IdctSelector>,
    );
    fn jpeg_idct_4x4(
        cinfo: *mut ffi::jpeg_decompress_struct,
        compptr: *mut ffi::jpeg_component_info,
        coef_block: *mut ffi::JCOEF,
        output_buf: *mut *mut u8,
        output_col: ffi::JDIMENSION,
    );
    fn jpeg_idct_2x2(
        cinfo: *mut ffi::jpeg_decompress_struct,
        compptr: *mut ffi::jpeg_component_info,
        coef_block: *mut ffi::JCOEF,
        output_buf: *mut *mut u8,
        output_col: ffi::JDIMENSION,
    );
}

/// Swaps libjpeg's plain-C 4×4 and 2×2 inverse DCTs (libjpeg 6b's, which read up to 49
/// and 25 coefficients: 15 % of a corpus run) for ones that read only the 16 and 4 the
/// reduced output is made of, as `jpeg-decoder` and libjpeg 9 compute them. Their
/// outputs keep the PSNR bound; the other sizes keep libjpeg's routines, and so do both
/// sizes where libjpeg chose its SIMD ones (`libjpeg-simd`), which are faster still.
unsafe extern "C-unwind" fn select_idct(
    _cinfo: *mut ffi::jpeg_decompress_struct,
    _compptr: *mut ffi::jpeg_component_info,
    method: *mut Option<IdctMethod>,
    _category: *mut c_int,
) {
    // SAFETY: libjpeg passes a valid pointer to the routine it chose.
    let chosen = unsafe { *method }.map(|f| f as *const ());
    let replacement: Option<IdctMethod> = if chosen == Some(jpeg_idct_4x4 as *const ()) {
        Some(idct_4x4)
    } else if chosen == Some(jpeg_idct_2x2 as *const ()) {
        Some(idct_2x2)
    } else {
        return;
    };
    // SAFETY: as above; the multiplier table libjpeg builds for the category it chose
    // (islow) stays unused, as ours dequantize with the component's quantisation table.
    unsafe { *method = replacement };
}

/// The adapter from libjpeg's calling convention to [`idct::block`].
///
/// # Safety
///
/// As for any libjpeg inverse DCT: `coef_block` holds 64 coefficients, `compptr` is the
/// component (its `quant_table` null or valid), and `output_buf` has `N` rows with `N`
/// samples from `output_col` on.
unsafe fn run_idct<const N: usize>(
    compptr: *mut ffi::jpeg_component_info,
    coef_block: *mut ffi::JCOEF,
    output_buf: *mut *mut u8,
    output_col: ffi::JDIMENSION,
) {
    // SAFETY: the caller's contract (libjpeg's own for these routines).
    unsafe {
        let coefficients = &*coef_block.cast::<[i16; 64]>();
        let table = (*compptr).quant_table;
        // No table yet: the component never appeared in a scan, its coefficients are
        // zero, as libjpeg's all-zero multiplier table would make them.
        let quant = if table.is_null() {
            &[0; 64]
        } else {
            &(*table).quantval
        };
        let block = idct::block::<N>(coefficients, quant);
        // N rows of N samples: the block's first N·N bytes.
        for row in 0..N {
            let out = (*output_buf.add(row)).add(output_col as usize);
            std::ptr::copy_nonoverlapping(block[row * N..][..N].as_ptr(), out, N);
        }
    }
}

unsafe extern "C-unwind" fn idct_4x4(
    _cinfo: *mut ffi::jpeg_decompress_struct,
    compptr: *mut ffi::jpeg_component_info,
    coef_block: *mut ffi::JCOEF,
    output_buf: *mut *mut u8,
    output_col: ffi::JDIMENSION,
) {
    // SAFETY: called by libjpeg as its 4×4 routine, under that routine's contract.
    unsafe { run_idct::<4>(compptr, coef_block, output_buf, output_col) }
}

unsafe extern "C-unwind" fn idct_2x2(
    _cinfo: *mut ffi::jpeg_decompress_struct,
    compptr: *mut ffi::jpeg_component_info,
    coef_block: *mut ffi::JCOEF,
    output_buf: *mut *mut u8,
    output_col: ffi::JDIMENSION,
) {
    // SAFETY: called by libjpeg as its 2×2 routine, under that routine's contract.
    unsafe { run_idct::<2>(compptr, coef_block, output_buf, output_col) }
}

/// Reduced inverse DCTs from the low `N`×`N` coefficients (the scheme of Dugad and
/// Ahuja, "A Fast Scheme for Image Size Change in the Compressed Domain", 2001, as
/// libjpeg 9 and `jpeg-decoder` implement it), in wrapping integer arithmetic: hostile
/// coefficients give garbage pixels, never a panic inside libjpeg.
mod idct {
    use std::num::Wrapping as W;

    /// Fixed-point constants carry 12 fractional bits.
    const CONST_BITS: usize = 12;
    /// The column pass keeps 2 more bits of precision for the row pass.
    const PASS1_BITS: usize = 2;

    const fn fix(x: f64) -> W<i32> {
        W((x * (1 << CONST_BITS) as f64 + 0.5) as i32)
    }

    fn clamp(x: W<i32>) -> u8 {
        x.0.clamp(0, 255) as u8
    }

    fn dequantize(coefficients: &[i16; 64], quant: &[u16; 64], i: usize) -> W<i32> {
        W(i32::from(coefficients[i]) * i32::from(quant[i]))
    }

    /// `N` × `N` samples, row by row, for `N` of 4 or 2.
    pub(super) fn block<const N: usize>(coefficients: &[i16; 64], quant: &[u16; 64]) -> [u8; 16] {
        let mut out = [0u8; 16];
        match N {
            4 => idct_4x4(coefficients, quant, &mut out),
            2 => idct_2x2(coefficients, quant, &mut out),
            _ => unreachable!("only the 4x4 and 2x2 routines are replaced"),
        }
        out
    }

    /// The 4-point IDCT's odd part, shared by both passes.
    fn odd(s1: W<i32>, s3: W<i32>) -> (W<i32>, W<i32>) {
        let p1 = (s1 + s3) * fix(0.541196100);
        (p1 + s3 * fix(-1.847759065), p1 + s1 * fix(0.765366865))
    }

    fn idct_4x4(coefficients: &[i16; 64], quant: &[u16; 64], out: &mut [u8; 16]) {
        // Besides the constants' bits and the column pass's, each 1-D pass scales by
        // sqrt(8): 3 more bits to drop, rounded, with the +128 level shift folded in.
        const FINAL_BITS: usize = CONST_BITS + PASS1_BITS + 3;
        let mut temp = [W(0i32); 16];
        for i in 0..4 {
            let s = |row: usize| dequantize(coefficients, quant, i + 8 * row);
            let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
            let x0 = (s0 + s2) << PASS1_BITS;
            let x2 = (s0 - s2) << PASS1_BITS;
            let (t0, t2) = odd(s1, s3);
            let round = W(1 << (CONST_BITS - PASS1_BITS - 1));
            let t0 = (t0 + round) >> (CONST_BITS - PASS1_BITS);
            let t2 = (t2 + round) >> (CONST_BITS - PASS1_BITS);
            temp[i] = x0 + t2;
            temp[i + 12] = x0 - t2;
            temp[i + 4] = x2 + t0;
            temp[i + 8] = x2 - t0;
        }
        let bias = W(1 << (FINAL_BITS - 1)) + W(128 << FINAL_BITS);
        for (row, samples) in temp.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            let x0 = ((row[0] + row[2]) << CONST_BITS) + bias;
            let x2 = ((row[0] - row[2]) << CONST_BITS) + bias;
            let (t0, t2) = odd(row[1], row[3]);
            samples[0] = clamp((x0 + t2) >> FINAL_BITS);
            samples[3] = clamp((x0 - t2) >> FINAL_BITS);
            samples[1] = clamp((x2 + t0) >> FINAL_BITS);
            samples[2] = clamp((x2 - t0) >> FINAL_BITS);
        }
    }

    fn idct_2x2(coefficients: &[i16; 64], quant: &[u16; 64], out: &mut [u8; 16]) {
        // Sums and differences only; the 3 bits are the two passes' sqrt(8) each.
        const SCALE_BITS: usize = 3;
        let s = |i: usize| dequantize(coefficients, quant, i);
        let bias = W(1 << (SCALE_BITS - 1)) + W(128 << SCALE_BITS);
        let (x0, x2) = (s(0) + s(8) + bias, s(0) - s(8) + bias);
        let (x1, x3) = (s(1) + s(9), s(1) - s(9));
        out[0] = clamp((x0 + x1) >> SCALE_BITS);
        out[1] = clamp((x0 - x1) >> SCALE_BITS);
        out[2] = clamp((x2 + x3) >> SCALE_BITS);
        out[3] = clamp((x2 - x3) >> SCALE_BITS);
    }
}

/// Decodes a JPEG at its scale, progressive scans that the scale does not need cut out
/// first (see [`jpeg::prune_scans`]).
pub(crate) fn decode(job: ScaledJpeg<'_>) -> Result<Raster, LibjpegError> {
    let ScaledJpeg {
        data,
        frame,
        scans,
        scale,
        limits,
        cmyk,
    } = job;
    let pruned = jpeg::prune_scans(data, frame, scans, scale);
    let (mut pixels, width, height, layout, inks) =
        guarded(|| decode_pruned(&pruned.data, scale, limits))?;
    if inks {
        pixels = colour::cmyk_to_rgb(cmyk, &mut pixels, true);
    }
    let mut raster = Raster {
        width,
        height,
        layout,
        data: pixels,
    };
    jpeg::correct_dc(&mut raster, frame, pruned.dc_truncated);
    Ok(raster)
}

/// libjpeg decoding a stream as it is (every progressive scan) at `scale`, without
/// pruning, DC correction or colour conversion: the bytes of pixels it decoded (for
/// `examples/decode_bound.rs`).
pub(crate) fn decode_stream(data: &[u8], scale: Scale) -> Result<usize, LibjpegError> {
    let (pixels, ..) = guarded(|| decode_pruned(data, scale, &Limits::default()))?;
    Ok(pixels.len())
}

/// What [`decode_pruned`] hands back: the pixels, width, height, layout, and whether the
/// pixels are inks (CMYK) still to be made RGB.
type Pixels = (Vec<u8>, u32, u32, Layout, bool);

fn decode_pruned(data: &[u8], scale: Scale, limits: &Limits) -> Result<Pixels, LibjpegError> {
    let mut d = Decompressor::new();
    let cinfo = &mut *d.cinfo;
    let len = c_ulong::try_from(data.len()).map_err(|_| LibjpegError::TooLarge)?;
    // SAFETY: `data` outlives the decompressor (dropped at the end of this function).
    unsafe {
        ffi::jpeg_mem_src(cinfo, data.as_ptr(), len);
        ffi::jpeg_read_header(cinfo, 1);
    }
    // The progressive coefficient buffer is libjpeg's one large allocation: held to the
    // same limit as ours.
    // SAFETY: `mem` is set by `jpeg_create_decompress`.
    unsafe {
        (*cinfo.common.mem).max_memory_to_use =
            c_long::try_from(limits.max_alloc_bytes).unwrap_or(0x7fff_ffff);
    }
    let (inks, layout, channels) = match cinfo.jpeg_color_space {
        ffi::J_COLOR_SPACE::JCS_GRAYSCALE => {
            cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_GRAYSCALE;
            (false, Layout::Luma, 1)
        }
        ffi::J_COLOR_SPACE::JCS_CMYK | ffi::J_COLOR_SPACE::JCS_YCCK => {
            cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_CMYK;
            (true, Layout::Rgb, 4)
        }
        _ => {
            cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
            (false, Layout::Rgb, 3)
        }
    };
    cinfo.scale_num = u32::from(scale.eighths());
    cinfo.scale_denom = 8;
    // Pruned progressive streams lack the coefficients a reduced IDCT does not read:
    // smoothing would estimate them, for time and no gain at that scale.
    cinfo.do_block_smoothing = 0;
    // SAFETY: the header is read; this only computes the output size.
    unsafe { ffi::jpeg_calc_output_dimensions(cinfo) };
    let want = (
        scale.apply(cinfo.image_width),
        scale.apply(cinfo.image_height),
    );
    let got = (cinfo.output_width, cinfo.output_height);
    if got != want {
        return Err(LibjpegError::Size { want, got });
    }
    let stride = (got.0 as usize)
        .checked_mul(channels)
        .ok_or(LibjpegError::TooLarge)?;
    let bytes = stride
        .checked_mul(got.1 as usize)
        .filter(|&n| u64::try_from(n).is_ok_and(|n| n <= limits.max_alloc_bytes))
        .ok_or(LibjpegError::TooLarge)?;
    // Not zeroed: libjpeg writes every row before `pixels` gets its length, and an
    // error drops it unread (zeroing took as long as a small image's IDCT).
    let mut pixels: Vec<u8> = Vec::with_capacity(bytes);
    let mut rows: Vec<*mut u8> = pixels.spare_capacity_mut()[..bytes]
        .chunks_exact_mut(stride)
        .map(|r| r.as_mut_ptr().cast::<u8>())
        .collect();
    // SAFETY: every row pointer addresses `stride` bytes of `pixels`' capacity, which
    // libjpeg writes at most (`output_width` × `channels`), and only below
    // `output_height`; the length is set once every row is written.
    unsafe {
        ffi::jpeg_start_decompress(cinfo);
        if usize::try_from(cinfo.output_components) != Ok(channels) {
            return Err(LibjpegError::Size { want, got });
        }
        while cinfo.output_scanline < cinfo.output_height {
            let done = cinfo.output_scanline;
            let read = ffi::jpeg_read_scanlines(
                cinfo,
                rows.as_mut_ptr().add(done as usize),
                cinfo.output_height - done,
            );
            if read == 0 {
                return Err(LibjpegError::Rows {
                    want: cinfo.output_height,
                    got: done,
                });
            }
        }
        ffi::jpeg_finish_decompress(cinfo);
        pixels.set_len(bytes);
    }
    Ok((pixels, got.0, got.1, layout, inks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::test_streams::eighths;
    use crate::jpeg::{scans, Frame};

    fn photo(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-data");
        std::fs::read(path.join(name)).expect("test-data photo")
    }

    fn decode_at(data: &[u8], eighths_: u8) -> Result<Raster, LibjpegError> {
        let frame = Frame::parse(data).expect("frame");
        let found = if frame.progressive {
            scans(data).expect("scans")
        } else {
            Vec::new()
        };
        decode(ScaledJpeg {
            data,
            frame: &frame,
            scans: &found,
            scale: eighths(eighths_),
            limits: &Limits::default(),
            cmyk: None,
        })
    }

    /// libjpeg and `jpeg-decoder` run the same reduced IDCTs: their outputs differ by
    /// rounding and chroma upsampling only.
    #[test]
    fn scaled_decodes_agree_with_jpeg_decoder() {
        let data = photo("04-fallenleaf.jpg");
        let frame = Frame::parse(&data).expect("frame");
        for n in [1, 2, 4, 8] {
            let ours = decode_at(&data, n).expect("libjpeg decode");
            let theirs = jpeg::decode_scaled(ScaledJpeg {
                data: &data,
                frame: &frame,
                scans: &[],
                scale: eighths(n),
                limits: &Limits::default(),
                cmyk: None,
            })
            .expect("jpeg-decoder decode");
            assert_eq!((ours.width, ours.height), (theirs.width, theirs.height));
            let mse = ours
                .data
                .iter()
                .zip(&theirs.data)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
                / ours.data.len() as f64;
            let psnr = 10.0 * (255.0f64.powi(2) / mse).log10();
            assert!(psnr > 35.0, "{n}/8: {psnr:.1} dB");
        }
    }

    /// At 1/2 and 1/4 our replacements of libjpeg's inverse DCTs run (`select_idct`): on
    /// a grey photo, with no colour conversion or upsampling to tell the decoders apart,
    /// libjpeg's output is then `jpeg-decoder`'s to the byte. (With SIMD, libjpeg's own
    /// SIMD routines run instead.)
    #[cfg(not(feature = "libjpeg-simd"))]
    #[test]
    fn reduced_idcts_are_replaced() {
        let data = photo("06-grey-grayscale.jpg");
        let frame = Frame::parse(&data).expect("frame");
        for n in [2, 4] {
            let ours = decode_at(&data, n).expect("libjpeg decode");
            let theirs = jpeg::decode_scaled(ScaledJpeg {
                data: &data,
                frame: &frame,
                scans: &[],
                scale: eighths(n),
                limits: &Limits::default(),
                cmyk: None,
            })
            .expect("jpeg-decoder decode");
            assert_eq!(ours.layout, Layout::Luma);
            assert!(ours.data == theirs.data, "{n}/8 differs");
        }
    }

    #[test]
    fn a_dc_only_block_is_flat() {
        let mut coefficients = [0i16; 64];
        coefficients[0] = 100;
        let mut quant = [1u16; 64];
        quant[0] = 4;
        // 100 · 4 / 8 + 128.
        assert_eq!(idct::block::<4>(&coefficients, &quant), {
            let mut want = [0u8; 16];
            want.fill(178);
            want
        });
        assert_eq!(idct::block::<2>(&coefficients, &quant)[..4], [178; 4]);
    }

    /// Errors come back as values, without printing; corrupt entropy data (a warning to
    /// libjpeg, which would fill in grey) is an error too, so that zune-jpeg judges it.
    #[test]
    fn broken_streams_are_errors_not_panics() {
        let data = photo("04-fallenleaf.jpg");
        assert!(matches!(
            decode_at(&data[..data.len() / 2], 2),
            Err(LibjpegError::Library(_))
        ));
        let mut corrupt = data.clone();
        let middle = corrupt.len() / 2;
        // A restart marker where none belongs.
        corrupt[middle..middle + 2].copy_from_slice(&[0xff, 0xd5]);
        assert!(decode_at(&corrupt, 2).is_err());
        let tight = Limits {
            max_alloc_bytes: 1000,
            ..Limits::default()
        };
        let frame = Frame::parse(&data).expect("frame");
        let too_large = decode(ScaledJpeg {
            data: &data,
            frame: &frame,
            scans: &[],
            scale: eighths(8),
            limits: &tight,
            cmyk: None,
        });
        assert!(matches!(too_large, Err(LibjpegError::TooLarge)));
    }
}
