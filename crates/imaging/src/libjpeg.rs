//! JPEG decoding at a DCT scale through libjpeg, as `mozjpeg-sys` bundles it
//! (libjpeg-turbo's C code, built by the `cc` crate without its SIMD assembly: no cmake,
//! no nasm), for the default build.
//!
//! Even without SIMD its Huffman decoding is faster than `jpeg-decoder`'s, which is most
//! of a scaled decode; figures in `crates/bench/PERF.md`. Encoding stays with
//! `jpeg-encoder`, whose SIMD DCT makes it twice as fast as this C one. Colour follows
//! the `turbo` module: CMYK and YCCK come back as the stored (Adobe-inverted) inks.
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
        unsafe { ffi::jpeg_create_decompress(&mut *cinfo) };
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
    let mut pixels = vec![0u8; bytes];
    let mut rows: Vec<*mut u8> = pixels
        .chunks_exact_mut(stride)
        .map(|r| r.as_mut_ptr())
        .collect();
    // SAFETY: every row pointer addresses `stride` bytes of `pixels`, which libjpeg
    // writes at most (`output_width` × `channels`), and only below `output_height`.
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
        let grey = decode_at(&photo("06-grey-grayscale.jpg"), 2).expect("grey");
        assert_eq!(grey.layout, Layout::Luma);
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
