//! [`process`]: one image in memory to one encoded output per preset, in memory.
//!
//! Nothing here touches a file: the caller reads the input and stores the outputs (the
//! worker writes them durably as [`Progress::Output`] hands each over).

use std::time::Instant;

use image::metadata::Orientation;
use pixpool_model::Placeholder;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::decode::read_header;
use crate::encode::encode;
use crate::error::{ImagingError, OutputSinkError};
use crate::format::{Format, OutputFormat};
use crate::jpeg::Scale;
use crate::limits::Limits;
use crate::placeholder;
use crate::preset::{geometry, inside, validate_presets, Geometry, Preset, Region};
use crate::raster::Raster;
use crate::resize::{Rendition, Resampler};

/// One encoded output of [`process`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The preset it was made for.
    pub preset: String,
    /// Width as displayed (orientation applied).
    pub width: u32,
    /// Height as displayed (orientation applied).
    pub height: u32,
    /// The encoding: one of the preset's formats (its `alpha_format` instead of its
    /// `format` for a source with transparency). Gives the extension to store it under.
    pub format: OutputFormat,
    /// Whether it is the preset's fallback, served when `Accept` names none of the
    /// others (the last of its formats); `false` for an alternative.
    #[serde(default = "yes")]
    pub fallback: bool,
    /// Media type, e.g. `image/jpeg`.
    pub content_type: String,
    /// Length of `data`, kept as a field so that the serialised description still says
    /// how large the output is without carrying it.
    pub bytes: u64,
    /// The encoded image. Not serialised: a description travels, the pixels do not (a
    /// deserialised `Output` has none).
    #[serde(skip)]
    pub data: Vec<u8>,
}

fn yes() -> bool {
    true
}

/// Wall-clock time spent in each stage of one [`process`] call, in milliseconds. The
/// caller's own time in `on_progress` is not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Sniffing, decoding and normalising the pixels.
    pub decode_ms: f64,
    /// Resampling for all presets, and orienting the outputs.
    pub resize_ms: f64,
    /// Encoding all outputs.
    pub encode_ms: f64,
}

/// What [`process`] made of one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Processed {
    /// The format sniffed from the content.
    pub source_format: Format,
    /// Source width as displayed (EXIF orientation applied).
    pub source_width: u32,
    /// Source height as displayed (EXIF orientation applied).
    pub source_height: u32,
    /// One entry per preset and format, with its encoded bytes, in the order the
    /// presets were given, each preset's formats in its order (the fallback last).
    pub outputs: Vec<Output>,
    /// What a front-end shows while the image loads.
    pub placeholder: Placeholder,
    /// Time per stage.
    pub timings: StageTimings,
}

/// What [`process_with_progress`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The source is decoded; resizing starts.
    Decoded {
        /// Source width as displayed.
        width: u32,
        /// Source height as displayed.
        height: u32,
    },
    /// One of a preset's outputs is encoded and final. Reported largest preset first
    /// (the order the cascade makes them), not in preset order: `index` says which;
    /// a preset's formats in its order.
    Output {
        /// Index of the preset in the slice given.
        index: usize,
        /// The output, bytes included: store them from here, before the next output
        /// is made, rather than waiting for them all.
        output: &'a Output,
    },
}

/// [`process_with_progress`] without progress reports.
pub fn process(
    input: &[u8],
    presets: &[Preset],
    limits: &Limits,
) -> Result<Processed, ImagingError> {
    process_with_progress(input, presets, limits, &mut |_| Ok(()))
}

/// Decodes `input` once and encodes one output per preset.
///
/// The format is sniffed from the content. `on_progress` is called after the decode and
/// after each output is encoded; when it returns an error, processing stops with
/// [`ImagingError::Sink`]. On any error, outputs already handed to `on_progress` are the
/// caller's to discard: none is reported after the error.
#[tracing::instrument(level = "debug", skip_all, fields(input_bytes = input.len()))]
pub fn process_with_progress(
    input: &[u8],
    presets: &[Preset],
    limits: &Limits,
    on_progress: &mut dyn FnMut(Progress<'_>) -> Result<(), OutputSinkError>,
) -> Result<Processed, ImagingError> {
    validate_presets(presets)?;

    let started = Instant::now();
    let keep_alpha = presets.iter().any(Preset::may_keep_alpha);
    let header = read_header(input, limits)?;
    let orientation = header.orientation;
    let transposed = swaps_axes(orientation);
    // Geometry is worked out on the stored size from the header; the decoded raster may
    // be smaller (shrink-on-load) but shows the same region, which the resizer maps.
    let (stored_width, stored_height) = (header.width, header.height);
    let (source_width, source_height) = if transposed {
        (stored_height, stored_width)
    } else {
        (stored_width, stored_height)
    };

    // Largest first, so that each smaller output can be resampled from a larger one.
    let mut order: Vec<(usize, Geometry)> = presets
        .iter()
        .map(|p| geometry(p, stored_width, stored_height, transposed))
        .enumerate()
        .collect();
    order.sort_by_key(|(_, g)| std::cmp::Reverse(u64::from(g.width) * u64::from(g.height)));
    let wanted: Vec<Geometry> = order.iter().map(|(_, g)| *g).collect();
    let scale = match header.format {
        Format::Jpeg => match &header.jpeg {
            Some(frame) => Scale::for_frame(frame, stored_width, stored_height, &wanted),
            None => Scale::smallest_for(stored_width, stored_height, &wanted),
        },
        _ => Scale::FULL,
    };
    // With libwebp, a WebP is rescaled while it is decoded (the default build has no
    // reduced decode for it).
    #[cfg(feature = "libwebp")]
    let reduce_to = (header.format == Format::WebP)
        .then(|| crate::webp::target_size(stored_width, stored_height, &wanted))
        .flatten();
    #[cfg(not(feature = "libwebp"))]
    let reduce_to = None;

    let decoded = header.decode(scale, reduce_to, limits, keep_alpha)?;
    let mut timings = StageTimings {
        decode_ms: elapsed_ms(started),
        ..StageTimings::default()
    };

    on_progress(Progress::Decoded {
        width: source_width,
        height: source_height,
    })
    .map_err(|source| ImagingError::Sink {
        preset: None,
        source,
    })?;
    let source_format = decoded.format;
    let source = Rendition {
        region: Region::whole(stored_width, stored_height),
        raster: decoded.raster,
    };
    let mut resampler = Resampler::default();
    let mut renditions: Vec<Rendition> = Vec::with_capacity(presets.len());
    let mut outputs: Vec<Vec<Output>> = vec![Vec::new(); presets.len()];

    for (index, want) in order {
        let preset = &presets[index];
        let rendition = make_outputs(
            preset,
            &want,
            orientation,
            &source,
            &renditions,
            &mut resampler,
            &mut timings,
            &mut |output| {
                on_progress(Progress::Output {
                    index,
                    output: &output,
                })
                .map_err(|source| ImagingError::Sink {
                    preset: Some(preset.name.clone()),
                    source,
                })?;
                outputs[index].push(output);
                Ok(())
            },
        )?;
        renditions.push(rendition);
    }

    let outputs = outputs.into_iter().flatten().collect();

    // Last, from the smallest output that covers the whole source, if any.
    let started = Instant::now();
    let want = inside(
        stored_width,
        stored_height,
        Some(placeholder::SIDE),
        Some(placeholder::SIDE),
    );
    let (small, _) = resampler
        .render(&source, &renditions, &want)
        .map_err(|source| ImagingError::Resize {
            preset: "(placeholder)".into(),
            width: want.width,
            height: want.height,
            source,
        })?;
    let oriented = orient(&small, orientation);
    let placeholder = placeholder::compute(
        oriented.as_ref().unwrap_or(&small),
        f64::from(source_width) / f64::from(source_height),
    );
    timings.resize_ms += elapsed_ms(started);
    debug!(
        decode_ms = timings.decode_ms,
        resize_ms = timings.resize_ms,
        encode_ms = timings.encode_ms,
        "image rendered"
    );
    Ok(Processed {
        source_format,
        source_width,
        source_height,
        outputs,
        placeholder,
        timings,
    })
}

/// Resamples and orients the rendering of one preset and encodes it in each of its
/// formats, handing each output to `deliver` as soon as it is made.
///
/// Returns its un-oriented raster, kept for the cascade.
#[allow(clippy::too_many_arguments)]
fn make_outputs(
    preset: &Preset,
    want: &Geometry,
    orientation: Orientation,
    source: &Rendition,
    renditions: &[Rendition],
    resampler: &mut Resampler,
    timings: &mut StageTimings,
    deliver: &mut dyn FnMut(Output) -> Result<(), ImagingError>,
) -> Result<Rendition, ImagingError> {
    let started = Instant::now();
    let (raster, cascaded) = resampler
        .render(source, renditions, want)
        .map_err(|source| ImagingError::Resize {
            preset: preset.name.clone(),
            width: want.width,
            height: want.height,
            source,
        })?;
    // The un-oriented raster is kept for the cascade, which works in stored orientation.
    let oriented = orient(&raster, orientation);
    let oriented = oriented.as_ref().unwrap_or(&raster);
    timings.resize_ms += elapsed_ms(started);

    let (width, height) = (oriented.width, oriented.height);
    let formats = preset.formats_for(oriented.layout.has_alpha());
    let last = formats.len() - 1;
    for (i, format) in formats.into_iter().enumerate() {
        let started = Instant::now();
        let data =
            encode(oriented, format, preset.quality).map_err(|source| ImagingError::Encode {
                preset: preset.name.clone(),
                format,
                source,
            })?;
        timings.encode_ms += elapsed_ms(started);
        debug!(
            preset = %preset.name,
            format = format.name(),
            width,
            height,
            bytes = data.len(),
            cascaded,
            "encoded output"
        );
        deliver(Output {
            preset: preset.name.clone(),
            width,
            height,
            format,
            fallback: i == last,
            content_type: format.content_type().to_owned(),
            bytes: u64::try_from(data.len()).expect("a buffer length fits in u64"),
            data,
        })?;
    }
    Ok(Rendition {
        raster,
        region: want.region,
    })
}

/// Applies the EXIF orientation to a copy of an output (cheap: outputs are small), or
/// returns `None` when there is nothing to do.
///
/// One pass from the source into a new buffer, with the pixel mapping of the `image`
/// crate's `apply_orientation` (which would need a copy of the raster first, since the
/// un-oriented one is kept for the cascade).
fn orient(raster: &Raster, orientation: Orientation) -> Option<Raster> {
    if orientation == Orientation::NoTransforms {
        return None;
    }
    let (w, h) = (raster.width as usize, raster.height as usize);
    let mut out = vec![0u8; raster.data.len()];
    // Monomorphised per pixel size: a pixel copy is then a fixed-size move, not a
    // call to memmove (which made this pass cost as much as the resize).
    match raster.layout.channels() {
        1 => orient_pixels::<1>(&raster.data, w, h, orientation, &mut out),
        2 => orient_pixels::<2>(&raster.data, w, h, orientation, &mut out),
        3 => orient_pixels::<3>(&raster.data, w, h, orientation, &mut out),
        _ => orient_pixels::<4>(&raster.data, w, h, orientation, &mut out),
    }
    let (width, height) = if swaps_axes(orientation) {
        (raster.height, raster.width)
    } else {
        (raster.width, raster.height)
    };
    Some(Raster {
        width,
        height,
        layout: raster.layout,
        data: out,
    })
}

/// [`orient`] for pixels of `C` bytes: `src` is `w` × `h`, `out` the same size.
fn orient_pixels<const C: usize>(
    src: &[u8],
    w: usize,
    h: usize,
    orientation: Orientation,
    out: &mut [u8],
) {
    let row = w * C;
    // Whole rows move for the flips about a horizontal axis.
    let reversed_row = |y: usize, dst: &mut [u8]| {
        let line = &src[y * row..(y + 1) * row];
        for (d, s) in dst.chunks_exact_mut(C).zip(line.chunks_exact(C).rev()) {
            d.copy_from_slice(s);
        }
    };
    match orientation {
        Orientation::NoTransforms => out.copy_from_slice(src),
        Orientation::FlipHorizontal => {
            for (y, dst) in out.chunks_exact_mut(row).enumerate() {
                reversed_row(y, dst);
            }
        }
        Orientation::FlipVertical => {
            for (y, dst) in out.chunks_exact_mut(row).enumerate() {
                dst.copy_from_slice(&src[(h - 1 - y) * row..(h - y) * row]);
            }
        }
        Orientation::Rotate180 => {
            for (y, dst) in out.chunks_exact_mut(row).enumerate() {
                reversed_row(h - 1 - y, dst);
            }
        }
        // Quarter turns: the output is h wide.
        Orientation::Rotate90 => quarter_turn::<C>(src, w, h, out, |dx, dy| (dy, h - 1 - dx)),
        Orientation::Rotate270 => quarter_turn::<C>(src, w, h, out, |dx, dy| (w - 1 - dy, dx)),
        Orientation::Rotate90FlipH => quarter_turn::<C>(src, w, h, out, |dx, dy| (dy, dx)),
        Orientation::Rotate270FlipH => {
            quarter_turn::<C>(src, w, h, out, |dx, dy| (w - 1 - dy, h - 1 - dx))
        }
    }
}

/// Side of the square tiles a quarter turn walks: one output row of a tile reads a
/// source column of the tile, and the tile's source rows stay in cache between them.
const TURN_TILE: usize = 64;

/// Fills `out` (`h` wide, `w` high) from `src` (`w` × `h`, `C` bytes a pixel), output
/// pixel (dx, dy) from the source pixel (x, y) that `source` names, tile by tile.
fn quarter_turn<const C: usize>(
    src: &[u8],
    w: usize,
    h: usize,
    out: &mut [u8],
    source: impl Fn(usize, usize) -> (usize, usize),
) {
    let (out_w, out_h) = (h, w);
    for ty in (0..out_h).step_by(TURN_TILE) {
        for tx in (0..out_w).step_by(TURN_TILE) {
            for dy in ty..(ty + TURN_TILE).min(out_h) {
                let line = &mut out[dy * out_w * C..(dy + 1) * out_w * C];
                for dx in tx..(tx + TURN_TILE).min(out_w) {
                    let (x, y) = source(dx, dy);
                    let at = (y * w + x) * C;
                    line[dx * C..dx * C + C].copy_from_slice(&src[at..at + C]);
                }
            }
        }
    }
}

/// Whether `orientation` turns the image a quarter turn, exchanging width and height.
pub(crate) fn swaps_axes(orientation: Orientation) -> bool {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => true,
        Orientation::NoTransforms
        | Orientation::Rotate180
        | Orientation::FlipHorizontal
        | Orientation::FlipVertical => false,
    }
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::Layout;

    #[test]
    fn orient_maps_pixels_as_the_image_crate_does() {
        let all = [
            Orientation::NoTransforms,
            Orientation::Rotate90,
            Orientation::Rotate180,
            Orientation::Rotate270,
            Orientation::FlipHorizontal,
            Orientation::FlipVertical,
            Orientation::Rotate90FlipH,
            Orientation::Rotate270FlipH,
        ];
        // Small, and larger than a turn's tile with partial tiles on both axes.
        let sizes = [
            (7u32, 4u32),
            (TURN_TILE as u32 * 2 + 5, TURN_TILE as u32 + 3),
        ];
        for (layout, (width, height)) in
            [Layout::Luma, Layout::LumaAlpha, Layout::Rgb, Layout::Rgba]
                .into_iter()
                .flat_map(|l| sizes.map(|s| (l, s)))
        {
            let len = width as usize * height as usize * layout.channels();
            let data = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let raster = Raster {
                width,
                height,
                layout,
                data,
            };
            for orientation in all {
                let mut expected = raster.clone().into_dynamic();
                expected.apply_orientation(orientation);
                let expected = Raster::from_dynamic(expected);
                let got = orient(&raster, orientation).unwrap_or_else(|| raster.clone());
                assert_eq!(
                    (got.width, got.height, got.layout, &got.data),
                    (
                        expected.width,
                        expected.height,
                        expected.layout,
                        &expected.data
                    ),
                    "{layout:?} {orientation:?}"
                );
            }
        }
    }
}
