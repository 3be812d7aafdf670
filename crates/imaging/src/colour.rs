//! Colour management: pixels that an embedded ICC profile describes are converted to
//! sRGB, so that every output is sRGB and carries no profile (untagged images are sRGB
//! on the web, in browsers and in the peer's sharp).
//!
//! The colour engine is `moxcms` (pure Rust, SIMD, already a dependency of the `image`
//! crate, so no build cost). The choices are libvips' (sharp's), checked against
//! LittleCMS's own `jpgicc` in the tests:
//!
//! - **Perceptual intent** where the profile has one (CMYK printing profiles do; a
//!   matrix/shaper RGB profile has one mapping whatever the intent).
//! - **RGB profiles** (Display P3 from phones, Adobe RGB, ProPhoto, camera profiles): RGB
//!   and RGBA rasters are converted after decoding, alpha untouched. A profile that
//!   maps every colour of a test cube to within one level of itself (sRGB under its many
//!   names and versions) is recognised as sRGB and costs nothing more.
//! - **CMYK profiles** (FOGRA39, SWOP, …): the JPEG decoders hand back the inks, which go
//!   through the profile to 16-bit sRGB, then through black-point compensation to 8 bits
//!   ([`CmykTransform`]). LittleCMS compensates the black point on its own whenever the
//!   intent is perceptual and the output profile is ICC v4, as libvips' and `jpgicc`'s
//!   sRGB are: a press's darkest black (all four inks, L* 10 to 20) becomes sRGB black,
//!   not a dark grey.
//! - **CMYK without a usable profile** (none, or one that does not parse or is not CMYK)
//!   goes through [the default CMYK profile](DEFAULT_CMYK_ICC), the one libvips assumes.
//! - **No profile**, a grey profile, one that does not parse, or one that does not match
//!   the pixels (an RGB profile on a grey image): the pixels are taken as sRGB, as
//!   browsers do.
//!
//! Parsed profiles and their transforms are kept per thread (a few, most recently used
//! first, none over [`CACHED_MAX_BYTES`]): a server sees the same handful of profiles
//! over and over, and building a CMYK transform takes longer than applying it to a small
//! raster. Larger profiles never get here ([`MAX_ICC_PROFILE_BYTES`]).
//!
//! [`MAX_ICC_PROFILE_BYTES`]: crate::limits::MAX_ICC_PROFILE_BYTES

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use moxcms::{ColorProfile, DataColorSpace, Layout as CmsLayout, RenderingIntent};
use moxcms::{Transform16BitExecutor, Transform8BitExecutor, TransformOptions};
use tracing::debug;

use crate::raster::{Layout, Raster};

/// What an embedded profile asks of the pixels.
#[derive(Clone)]
pub(crate) enum Profile {
    /// An RGB profile other than sRGB: RGB (or RGBA) to sRGB.
    Rgb(Arc<RgbTransforms>),
    /// A CMYK profile: inks (0: none, 255: full) to sRGB.
    Cmyk(Arc<CmykTransform>),
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Rgb(_) => "Profile::Rgb",
            Profile::Cmyk(_) => "Profile::Cmyk",
        })
    }
}

/// The two transforms of an RGB profile, one per pixel layout.
pub(crate) struct RgbTransforms {
    rgb: Arc<Transform8BitExecutor>,
    rgba: Arc<Transform8BitExecutor>,
}

/// A CMYK profile's way to sRGB: the inks to 16-bit sRGB by the profile, then each
/// sample through [`black_point_compensation`] to 8 bits.
pub(crate) struct CmykTransform {
    inks_to_srgb: Arc<Transform16BitExecutor>,
    /// Indexed by a 16-bit sRGB sample: the compensated 8-bit one.
    to_8bit: Box<[u8]>,
}

/// The CMYK profile taken for CMYK JPEGs without a usable one of their own: ArgyllCMS's
/// "Chemical proof" (Graeme W. Gill, public domain; a SWOP-like press), the default CMYK
/// profile of libvips and so of sharp. Its measurement-data tags (`targ`, `DevD`,
/// `CIED`, 734 KB that no transform reads) are left out; see `profiles/README.md`.
pub(crate) const DEFAULT_CMYK_ICC: &[u8] = include_bytes!("../profiles/chemical-proof.icc");

/// The [`DEFAULT_CMYK_ICC`] transform, built on first use (tens of milliseconds) and
/// shared by every thread; `None` if it cannot be built (never, short of a `moxcms`
/// regression, which a unit test would show), CMYK then taking the naive formula.
pub(crate) fn default_cmyk() -> Option<Arc<CmykTransform>> {
    static DEFAULT: OnceLock<Option<Arc<CmykTransform>>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| match parse(DEFAULT_CMYK_ICC) {
            Ok(Some(Profile::Cmyk(transform))) => Some(transform),
            other => {
                tracing::error!(?other, "the built-in CMYK profile does not parse");
                None
            }
        })
        .clone()
}

/// Profiles kept per thread.
const CACHED: usize = 4;

/// The largest profile kept in the per-thread cache, in bytes. The cache outlives the
/// job; the usual profiles (sRGB, Display P3, Adobe RGB: a few KB; FOGRA39, SWOP: under
/// 1 MB) fit, and a larger one is parsed again each time rather than kept.
const CACHED_MAX_BYTES: usize = 1 << 20;

thread_local! {
    /// The profiles seen last by this thread, their bytes and what they parsed to
    /// (`None`: sRGB, or nothing to apply), most recent first.
    static RECENT: RefCell<Vec<(Vec<u8>, Option<Profile>)>> = const { RefCell::new(Vec::new()) };
}

/// What the embedded profile `icc` asks of the pixels; `None` when nothing (sRGB, grey,
/// or a profile that cannot be used, which is logged).
pub(crate) fn profile(icc: &[u8]) -> Option<Profile> {
    if let Some(hit) = RECENT.with_borrow_mut(|recent| {
        let at = recent.iter().position(|(bytes, _)| bytes == icc)?;
        let entry = recent.remove(at);
        let profile = entry.1.clone();
        recent.insert(0, entry);
        Some(profile)
    }) {
        return hit;
    }
    let parsed = parse(icc)
        .inspect_err(|reason| debug!(%reason, bytes = icc.len(), "ICC profile not applied"))
        .ok()
        .flatten();
    if icc.len() <= CACHED_MAX_BYTES {
        RECENT.with_borrow_mut(|recent| {
            recent.truncate(CACHED - 1);
            recent.insert(0, (icc.to_vec(), parsed.clone()));
        });
    }
    parsed
}

fn parse(icc: &[u8]) -> Result<Option<Profile>, String> {
    let source = ColorProfile::new_from_slice(icc).map_err(|e| format!("unreadable: {e}"))?;
    let srgb = ColorProfile::new_srgb();
    let transform = |from: CmsLayout, to: CmsLayout| {
        with_fallback(|options| source.create_transform_8bit(from, &srgb, to, options))
    };
    match source.color_space {
        DataColorSpace::Rgb => {
            let rgb = transform(CmsLayout::Rgb, CmsLayout::Rgb)?;
            if is_identity(rgb.as_ref()) {
                return Ok(None);
            }
            let rgba = transform(CmsLayout::Rgba, CmsLayout::Rgba)?;
            Ok(Some(Profile::Rgb(Arc::new(RgbTransforms { rgb, rgba }))))
        }
        DataColorSpace::Cmyk => {
            let inks_to_srgb = with_fallback(|options| {
                source.create_transform_16bit(CmsLayout::Rgba, &srgb, CmsLayout::Rgb, options)
            })?;
            let black = black_point(inks_to_srgb.as_ref())?;
            Ok(Some(Profile::Cmyk(Arc::new(CmykTransform {
                to_8bit: black_point_compensation(black),
                inks_to_srgb,
            }))))
        }
        DataColorSpace::Gray => Ok(None),
        other => Err(format!("{other:?} data is not handled")),
    }
}

/// `make`'s transform for the perceptual intent, as libvips asks; a profile without
/// that intent's table falls back to the colorimetric one, as LittleCMS does.
fn with_fallback<T>(
    make: impl Fn(TransformOptions) -> Result<T, moxcms::CmsError>,
) -> Result<T, String> {
    let options = |rendering_intent| TransformOptions {
        rendering_intent,
        ..TransformOptions::default()
    };
    make(options(RenderingIntent::Perceptual))
        .or_else(|_| make(options(RenderingIntent::RelativeColorimetric)))
        .map_err(|e| format!("no transform to sRGB: {e}"))
}

/// The luminance (Y, 0 to 1, relative to the paper) of a CMYK profile's black as
/// LittleCMS detects it for a v2 profile and the perceptual intent: all four inks at
/// 100 %, made neutral, no lighter than L* 50.
fn black_point(inks_to_srgb: &Transform16BitExecutor) -> Result<f64, String> {
    let mut rgb = [0u16; 3];
    inks_to_srgb
        .transform(&[u16::MAX; 4], &mut rgb)
        .map_err(|e| format!("black point: {e}"))?;
    let [r, g, b] = rgb.map(|v| srgb_to_linear(f64::from(v) / f64::from(u16::MAX)));
    let luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    // Y of L* = 50.
    Ok(luminance.min(0.184_186))
}

/// The 16-bit to 8-bit table that maps a profile's black (luminance `black`) to sRGB
/// black and leaves white where it is. LittleCMS scales XYZ by `(X − Xbp) / (Xw − Xbp)`
/// per component; with a neutral black point (`Xbp = black·Xw`) that is, in linear sRGB,
/// `(c − black) / (1 − black)` per channel, clipped to 0.
fn black_point_compensation(black: f64) -> Box<[u8]> {
    (0..=u16::MAX)
        .map(|v| {
            let linear = srgb_to_linear(f64::from(v) / f64::from(u16::MAX));
            let compensated = ((linear - black) / (1.0 - black)).clamp(0.0, 1.0);
            // In 0..=255 by the clamp.
            (linear_to_srgb(compensated) * 255.0).round() as u8
        })
        .collect()
}

fn srgb_to_linear(v: f64) -> f64 {
    if v <= 0.040_45 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f64) -> f64 {
    if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// Whether `rgb` leaves every colour of a 9-level cube within one level: an sRGB
/// profile, under whatever name.
fn is_identity(rgb: &Transform8BitExecutor) -> bool {
    let levels: Vec<u8> = (0..=8u16).map(|i| (i * 255 / 8) as u8).collect();
    let cube: Vec<u8> = levels
        .iter()
        .flat_map(|&r| {
            let levels = &levels;
            levels
                .iter()
                .flat_map(move |&g| levels.iter().flat_map(move |&b| [r, g, b]))
        })
        .collect();
    let mut out = vec![0; cube.len()];
    rgb.transform(&cube, &mut out).is_ok()
        && cube.iter().zip(&out).all(|(a, b)| a.abs_diff(*b) <= 1)
}

impl Profile {
    /// Converts an RGB or RGBA raster to sRGB in place (other layouts, and CMYK
    /// profiles, which the decoders apply, are left alone). Returns whether it did.
    pub(crate) fn apply(&self, raster: &mut Raster) -> bool {
        let Profile::Rgb(transforms) = self else {
            return false;
        };
        let transform = match raster.layout {
            Layout::Rgb => &transforms.rgb,
            Layout::Rgba => &transforms.rgba,
            Layout::Luma | Layout::LumaAlpha => return false,
        };
        let mut out = vec![0; raster.data.len()];
        match transform.transform(&raster.data, &mut out) {
            Ok(()) => {
                raster.data = out;
                true
            }
            Err(e) => {
                debug!(cause = %e, "ICC transform failed; pixels left as they are");
                false
            }
        }
    }
}

/// Pixels converted at a time: the 16-bit buffers stay small (a few hundred KB)
/// whatever the image.
const CMYK_CHUNK: usize = 16 * 1024;

/// A CMYK raster (four bytes a pixel) to RGB: through `transform` when there is one,
/// else with the naive `R = (1 − C)(1 − K)`. `inverted` says the bytes are Adobe's (255
/// for no ink), as libjpeg hands them back; otherwise 0 is no ink, as `jpeg-decoder`
/// hands them back.
pub(crate) fn cmyk_to_rgb(
    transform: Option<&CmykTransform>,
    cmyk: &mut [u8],
    inverted: bool,
) -> Vec<u8> {
    if inverted {
        for v in cmyk.iter_mut() {
            *v = 255 - *v;
        }
    }
    if let Some(transform) = transform {
        match transform.apply(cmyk) {
            Ok(rgb) => return rgb,
            Err(e) => debug!(cause = %e, "CMYK profile not applied; naive conversion"),
        }
    }
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let k = 255 - u32::from(px[3]);
        for &c in &px[..3] {
            let c = 255 - u32::from(c);
            rgb.push(u8::try_from((c * k + 127) / 255).expect("a product of fractions"));
        }
    }
    rgb
}

impl CmykTransform {
    /// Inks (0: none) to compensated 8-bit sRGB.
    fn apply(&self, cmyk: &[u8]) -> Result<Vec<u8>, moxcms::CmsError> {
        let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
        let mut inks = Vec::with_capacity(CMYK_CHUNK * 4);
        let mut wide = vec![0u16; CMYK_CHUNK * 3];
        for chunk in cmyk.chunks(CMYK_CHUNK * 4) {
            inks.clear();
            inks.extend(chunk.iter().map(|&v| u16::from(v) * 257));
            let out = &mut wide[..chunk.len() / 4 * 3];
            self.inks_to_srgb.transform(&inks, out)?;
            rgb.extend(out.iter().map(|&v| self.to_8bit[usize::from(v)]));
        }
        Ok(rgb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srgb_under_any_name_is_recognised_and_costs_nothing() {
        let srgb = ColorProfile::new_srgb().encode().expect("encode sRGB");
        assert!(profile(&srgb).is_none());
    }

    #[test]
    fn display_p3_pixels_become_more_saturated_srgb() {
        let p3 = ColorProfile::new_display_p3()
            .encode()
            .expect("encode Display P3");
        let profile = profile(&p3).expect("P3 is not sRGB");
        // P3's pure red is outside sRGB: it clips to sRGB red, with green and blue at 0.
        // A P3 mid grey stays grey (same white point and near-same curve).
        let mut raster = Raster {
            width: 2,
            height: 1,
            layout: Layout::Rgb,
            data: vec![255, 0, 0, 128, 128, 128],
        };
        assert!(profile.apply(&mut raster));
        assert_eq!(&raster.data[..3], &[255, 0, 0]);
        let grey = &raster.data[3..];
        assert!(grey.iter().all(|&v| v.abs_diff(128) <= 1), "{grey:?}");
        // A muted P3 red is a more saturated sRGB red.
        let mut raster = Raster {
            width: 1,
            height: 1,
            layout: Layout::Rgba,
            data: vec![200, 80, 60, 77],
        };
        assert!(profile.apply(&mut raster));
        let [r, g, b, a] = raster.data[..] else {
            unreachable!("one RGBA pixel")
        };
        assert!(r > 200 && g < 80 && b < 60, "{:?}", raster.data);
        assert_eq!(a, 77, "alpha untouched");
    }

    #[test]
    fn a_large_profile_is_not_kept_after_the_job() {
        let big = vec![0u8; CACHED_MAX_BYTES + 1];
        assert!(profile(&big).is_none());
        let kept = RECENT.with_borrow(|recent| recent.iter().any(|(b, _)| b.len() == big.len()));
        assert!(!kept, "a profile over the cache bound was cached");
        let small = vec![0u8; 300];
        assert!(profile(&small).is_none());
        assert!(RECENT.with_borrow(|recent| recent.iter().any(|(b, _)| b == &small)));
    }

    #[test]
    fn garbage_and_grey_profiles_are_ignored() {
        assert!(profile(b"not an ICC profile").is_none());
        assert!(profile(&[0; 200]).is_none());
        let grey = ColorProfile::new_gray_with_gamma(1.8)
            .encode()
            .expect("encode a grey profile");
        assert!(profile(&grey).is_none());
    }

    /// The default CMYK profile parses; no ink is paper white and all four inks near sRGB
    /// black (compensated: its lightness is taken away, its slight blue tint kept, as
    /// LittleCMS does; uncompensated, the press's black is a dark grey).
    #[test]
    fn default_cmyk_maps_paper_to_white_and_full_ink_to_black() {
        let transform = default_cmyk().expect("the built-in profile parses");
        let mut inks = vec![0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255];
        let rgb = cmyk_to_rgb(Some(&transform), &mut inks, false);
        assert_eq!(&rgb[..3], &[255, 255, 255], "no ink");
        assert!(rgb[3..6].iter().all(|&v| v < 30), "all inks {rgb:?}");
        assert!(rgb[3..5].iter().all(|&v| v < 3), "all inks {rgb:?}");
        // Black ink alone is not quite as dark as all four.
        let sum = |px: &[u8]| px.iter().map(|&v| u32::from(v)).sum::<u32>();
        assert!(sum(&rgb[6..]) > sum(&rgb[3..6]), "{rgb:?}");
        let mut wide = [0u16; 3];
        transform
            .inks_to_srgb
            .transform(&[u16::MAX; 4], &mut wide)
            .expect("transform");
        assert!(
            wide.iter().all(|&v| v > 2000),
            "uncompensated black {wide:?}"
        );
    }

    #[test]
    fn black_point_compensation_keeps_white_and_order() {
        let table = black_point_compensation(0.01);
        assert_eq!((table[0], table[usize::from(u16::MAX)]), (0, 255));
        assert!(table.windows(2).all(|w| w[0] <= w[1]), "monotonic");
        // Y 0.01 is sRGB 0.1 (25.5 of 255): that and below become black.
        assert_eq!(table[6553], 0);
        assert!(table[7000] > 0);
        assert_eq!(
            black_point_compensation(0.0)[32768],
            128,
            "no black point: identity"
        );
    }

    /// The corpus photos tagged "sRGB IEC61966-2.1" (v2 profiles with their own
    /// 1024-entry curves) are recognised, and the FOGRA39 one is a CMYK profile.
    #[test]
    fn corpus_profiles_are_recognised() {
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
        if !corpus.join("MANIFEST.md").is_file() {
            eprintln!("skipping: ../shared/corpus not found");
            return;
        }
        for (name, cmyk) in [
            ("05-colorfulcups-progressive.jpg", false),
            ("08-path-orient8.jpg", false),
            ("16-fig-cmyk.jpg", true),
        ] {
            use image::ImageDecoder;
            let mut decoder = image::ImageReader::open(corpus.join(name))
                .expect("open")
                .into_decoder()
                .expect("header");
            let icc = decoder.icc_profile().expect("read").expect("a profile");
            match profile(&icc) {
                None => assert!(!cmyk, "{name}: sRGB"),
                Some(Profile::Cmyk(_)) => assert!(cmyk, "{name}: CMYK"),
                Some(Profile::Rgb(_)) => panic!("{name}: taken for a non-sRGB RGB profile"),
            }
        }
    }
}
