//! A done job's placeholder: ThumbHash, BlurHash, dominant colour and aspect ratio, from
//! one rendering of the whole source at most [`SIDE`] pixels a side (aspect kept, never
//! a preset's cover crop), resampled from the smallest output that covers it.

use base64::Engine as _;
use pixpool_model::Placeholder;

use crate::raster::{Layout, Raster};

/// The longest side of the rendering: ThumbHash takes at most 100×100, and BlurHash
/// needs no more.
pub(crate) const SIDE: u32 = 100;

/// The placeholder of `small`, an oriented rendering of the whole source no larger than
/// [`SIDE`] a side; `aspect_ratio` is the displayed source's width / height.
pub(crate) fn compute(small: &Raster, aspect_ratio: f64) -> Placeholder {
    let (w, h) = (small.width, small.height);
    let rgba = to_rgba(small);
    let thumbhash = thumbhash::rgba_to_thumb_hash(w as usize, h as usize, &rgba);
    // More components along the longer side, as BlurHash's authors suggest.
    let (cx, cy) = if w >= h { (4, 3) } else { (3, 4) };
    let blurhash = blurhash::encode(cx, cy, w, h, &rgba)
        // Only out-of-range component counts fail, and these are constants.
        .unwrap_or_default();
    Placeholder {
        thumbhash: base64::engine::general_purpose::STANDARD.encode(thumbhash),
        blurhash,
        dominant_color: dominant_color(&rgba),
        aspect_ratio,
    }
}

/// `raster`'s pixels as RGBA (not premultiplied).
fn to_rgba(raster: &Raster) -> Vec<u8> {
    let pixels = raster.width as usize * raster.height as usize;
    let mut out = Vec::with_capacity(pixels * 4);
    let data = &raster.data;
    match raster.layout {
        Layout::Luma => data
            .iter()
            .for_each(|&l| out.extend_from_slice(&[l, l, l, 255])),
        Layout::LumaAlpha => data
            .chunks_exact(2)
            .for_each(|p| out.extend_from_slice(&[p[0], p[0], p[0], p[1]])),
        Layout::Rgb => data
            .chunks_exact(3)
            .for_each(|p| out.extend_from_slice(&[p[0], p[1], p[2], 255])),
        Layout::Rgba => out.extend_from_slice(data),
    }
    out
}

/// The mean colour of the most populated cell of a 16-level-per-channel histogram,
/// weighted by alpha: the colour most of the image has, where the mean of a photo
/// would be a mud of all of them.
fn dominant_color(rgba: &[u8]) -> String {
    const CELLS: usize = 16 * 16 * 16;
    // Per cell: weight, and the weighted sums of r, g, b.
    let mut cells = vec![[0u64; 4]; CELLS];
    for p in rgba.chunks_exact(4) {
        let a = u64::from(p[3]);
        if a == 0 {
            continue;
        }
        let cell =
            usize::from(p[0] >> 4) << 8 | usize::from(p[1] >> 4) << 4 | usize::from(p[2] >> 4);
        let c = &mut cells[cell];
        c[0] += a;
        c[1] += a * u64::from(p[0]);
        c[2] += a * u64::from(p[1]);
        c[3] += a * u64::from(p[2]);
    }
    let best = cells.iter().max_by_key(|c| c[0]).filter(|c| c[0] > 0);
    let (r, g, b) = best.map_or((255, 255, 255), |c| {
        let mean = |sum: u64| u8::try_from((sum + c[0] / 2) / c[0]).unwrap_or(u8::MAX);
        (mean(c[1]), mean(c[2]), mean(c[3]))
    });
    format!("#{r:02x}{g:02x}{b:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raster(width: u32, height: u32, layout: Layout, data: Vec<u8>) -> Raster {
        Raster {
            width,
            height,
            layout,
            data,
        }
    }

    #[test]
    fn the_dominant_colour_is_the_largest_area_not_the_mean() {
        // Two thirds red, one third blue: the mean would be purple.
        let mut data = Vec::new();
        for i in 0..30 {
            data.extend_from_slice(if i < 20 {
                &[200, 10, 10]
            } else {
                &[10, 10, 200]
            });
        }
        let p = compute(&raster(6, 5, Layout::Rgb, data), 1.2);
        assert_eq!(p.dominant_color, "#c80a0a");
        assert!((p.aspect_ratio - 1.2).abs() < 1e-9);
    }

    #[test]
    fn transparent_pixels_do_not_count_and_grey_is_grey() {
        let data: Vec<u8> = (0..16)
            .flat_map(|i| if i < 12 { [0, 0] } else { [90, 255] })
            .collect();
        let p = compute(&raster(4, 4, Layout::LumaAlpha, data), 1.0);
        assert_eq!(p.dominant_color, "#5a5a5a");
    }

    #[test]
    fn the_hashes_decode_to_the_image_they_were_made_of() {
        // Left half black, right half white, 80×40.
        let data: Vec<u8> = (0..40 * 80)
            .map(|i| if i % 80 < 40 { 0 } else { 255 })
            .collect();
        let p = compute(&raster(80, 40, Layout::Luma, data), 2.0);
        let hash = base64::engine::general_purpose::STANDARD
            .decode(&p.thumbhash)
            .expect("base64");
        let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&hash).expect("thumbhash");
        // ThumbHash keeps the aspect as a ratio of its component counts: roughly.
        assert!((ratio - 2.0).abs() < 0.3, "aspect {ratio}");
        let (w, h, pixels) = thumbhash::thumb_hash_to_rgba(&hash).expect("thumbhash");
        let at = |x: usize, y: usize| pixels[(y * w + x) * 4];
        assert!(
            at(1, h / 2) < 80 && at(w - 2, h / 2) > 175,
            "dark left, light right"
        );
        // 4×3 components for a landscape source: "size flag" 3 + 3 × 8, then 83-base.
        assert_eq!(p.blurhash.len(), 4 + 2 * 4 * 3, "{}", p.blurhash);
        let back = blurhash::decode(&p.blurhash, 8, 4, 1.0).expect("blurhash");
        // Rows of 8: its cosines ring at the edge, so halves, not single pixels.
        let half = |from: usize| {
            (from..from + 4)
                .map(|x| u32::from(back[x * 4]))
                .sum::<u32>()
                / 4
        };
        assert!(
            half(0) < 100 && half(4) > 155,
            "dark left, light right: {back:?}"
        );
    }
}
