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
    let thumbhash = thumb_hash(w as usize, h as usize, &rgba);
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

/// ThumbHash of `w`×`h` RGBA pixels (at most 100 a side), as `thumbhash`'s
/// `rgba_to_thumb_hash` computes it but with its cosine transform split by axis:
/// each row is transformed once per horizontal frequency instead of once per
/// coefficient, a third of the work (the crate's took 2 % of a worker's CPU).
fn thumb_hash(w: usize, h: usize, rgba: &[u8]) -> Vec<u8> {
    let n = w * h;
    let (mut avg_r, mut avg_g, mut avg_b, mut avg_a) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for p in rgba.chunks_exact(4) {
        let alpha = f32::from(p[3]) / 255.0;
        avg_r += alpha / 255.0 * f32::from(p[0]);
        avg_g += alpha / 255.0 * f32::from(p[1]);
        avg_b += alpha / 255.0 * f32::from(p[2]);
        avg_a += alpha;
    }
    if avg_a > 0.0 {
        avg_r /= avg_a;
        avg_g /= avg_a;
        avg_b /= avg_a;
    }
    let has_alpha = avg_a < n as f32;
    let l_limit = if has_alpha { 5 } else { 7 };
    let longest = w.max(h) as f32;
    let lx = (((l_limit * w) as f32 / longest).round() as usize).max(1);
    let ly = (((l_limit * h) as f32 / longest).round() as usize).max(1);
    let (mut l, mut p, mut q, mut a) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    // Composited over the average colour, as LPQA.
    for px in rgba.chunks_exact(4) {
        let alpha = f32::from(px[3]) / 255.0;
        let r = avg_r * (1.0 - alpha) + alpha / 255.0 * f32::from(px[0]);
        let g = avg_g * (1.0 - alpha) + alpha / 255.0 * f32::from(px[1]);
        let b = avg_b * (1.0 - alpha) + alpha / 255.0 * f32::from(px[2]);
        l.push((r + g + b) / 3.0);
        p.push((r + g) / 2.0 - b);
        q.push(r - g);
        a.push(alpha);
    }
    let (l_dc, l_ac, l_scale) = encode_channel(&l, w, h, lx.max(3), ly.max(3));
    let (p_dc, p_ac, p_scale) = encode_channel(&p, w, h, 3, 3);
    let (q_dc, q_ac, q_scale) = encode_channel(&q, w, h, 3, 3);
    let (a_dc, a_ac, a_scale) = if has_alpha {
        encode_channel(&a, w, h, 5, 5)
    } else {
        (1.0, Vec::new(), 1.0)
    };

    let is_landscape = w > h;
    let header24 = (63.0 * l_dc).round() as u32
        | (((31.5 + 31.5 * p_dc).round() as u32) << 6)
        | (((31.5 + 31.5 * q_dc).round() as u32) << 12)
        | (((31.0 * l_scale).round() as u32) << 18)
        | if has_alpha { 1 << 23 } else { 0 };
    let header16 = (if is_landscape { ly } else { lx }) as u16
        | (((63.0 * p_scale).round() as u16) << 3)
        | (((63.0 * q_scale).round() as u16) << 9)
        | if is_landscape { 1 << 15 } else { 0 };
    let mut hash = Vec::with_capacity(25);
    hash.extend_from_slice(&[
        (header24 & 255) as u8,
        ((header24 >> 8) & 255) as u8,
        (header24 >> 16) as u8,
        (header16 & 255) as u8,
        (header16 >> 8) as u8,
    ]);
    if has_alpha {
        hash.push((15.0 * a_dc).round() as u8 | (((15.0 * a_scale).round() as u8) << 4));
    }
    // Four bits per factor, low nibble first.
    let mut odd = false;
    for f in l_ac.into_iter().chain(p_ac).chain(q_ac).chain(a_ac) {
        let u = (15.0 * f).round() as u8;
        match hash.last_mut() {
            Some(last) if odd => *last |= u << 4,
            _ => hash.push(u),
        }
        odd = !odd;
    }
    hash
}

/// One channel's DC, normalised AC factors (in ThumbHash's order: by row `cy`, then
/// `cx` while `cx * ny < nx * (ny - cy)`) and AC scale.
fn encode_channel(
    channel: &[f32],
    w: usize,
    h: usize,
    nx: usize,
    ny: usize,
) -> (f32, Vec<f32>, f32) {
    use std::f32::consts::PI;
    let cosines = |n: usize, size: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|c| {
                (0..size).map(move |i| (PI / size as f32 * c as f32 * (i as f32 + 0.5)).cos())
            })
            .collect()
    };
    let fx = cosines(nx, w);
    let fy = cosines(ny, h);
    // rows[cx * h + y]: row y against horizontal frequency cx.
    let mut rows = vec![0.0f32; nx * h];
    for (y, row) in channel.chunks_exact(w).enumerate() {
        for cx in 0..nx {
            let basis = &fx[cx * w..(cx + 1) * w];
            // Eight partial sums: independent chains the compiler can vectorise.
            let mut lanes = [0.0f32; 8];
            let (body, tail) = row.split_at(row.len() / 8 * 8);
            for (px, bx) in body.chunks_exact(8).zip(basis.chunks_exact(8)) {
                for k in 0..8 {
                    lanes[k] += px[k] * bx[k];
                }
            }
            let mut sum: f32 = lanes.iter().sum();
            for (px, bx) in tail.iter().zip(&basis[body.len()..]) {
                sum += px * bx;
            }
            rows[cx * h + y] = sum;
        }
    }
    let (mut dc, mut scale) = (0.0f32, 0.0f32);
    let mut ac = Vec::with_capacity(nx * ny / 2);
    for cy in 0..ny {
        let basis = &fy[cy * h..(cy + 1) * h];
        let mut cx = 0;
        while cx * ny < nx * (ny - cy) {
            let column = &rows[cx * h..(cx + 1) * h];
            let f = column.iter().zip(basis).map(|(r, b)| r * b).sum::<f32>() / (w * h) as f32;
            if cx > 0 || cy > 0 {
                ac.push(f);
                scale = f.abs().max(scale);
            } else {
                dc = f;
            }
            cx += 1;
        }
    }
    if scale > 0.0 {
        for f in &mut ac {
            *f = 0.5 + 0.5 / scale * *f;
        }
    }
    (dc, ac, scale)
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
    fn thumb_hash_matches_the_reference_encoder() {
        // Gradients, noise and shapes; opaque and not; landscape, portrait, tiny.
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let (mut same, mut cases) = (0, 0);
        for &(w, h) in &[
            (100, 75),
            (75, 100),
            (100, 100),
            (64, 9),
            (1, 1),
            (3, 100),
            (97, 61),
        ] {
            for alpha in [false, true] {
                let mut rgba = Vec::with_capacity(w * h * 4);
                for y in 0..h {
                    for x in 0..w {
                        let noise = (next() % 48) as usize;
                        rgba.extend_from_slice(&[
                            ((x * 255 / w + noise) % 256) as u8,
                            ((y * 255 / h + noise / 2) % 256) as u8,
                            if (x / 10 + y / 10) % 2 == 0 { 220 } else { 30 },
                            if alpha {
                                ((x + y) * 255 / (w + h)) as u8
                            } else {
                                255
                            },
                        ]);
                    }
                }
                let ours = thumb_hash(w, h, &rgba);
                let reference = thumbhash::rgba_to_thumb_hash(w, h, &rgba);
                cases += 1;
                if ours == reference {
                    same += 1;
                    continue;
                }
                // Sums in another order may round a factor to the next of its 16 steps:
                // the same length, and the decoded images a step apart at most.
                assert_eq!(ours.len(), reference.len(), "{w}×{h} alpha {alpha}");
                let (_, _, a) = thumbhash::thumb_hash_to_rgba(&ours).expect("ours decodes");
                let (_, _, b) = thumbhash::thumb_hash_to_rgba(&reference).expect("decodes");
                let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max();
                assert!(worst <= Some(12), "{w}×{h} alpha {alpha}: {worst:?}");
            }
        }
        assert!(
            same * 4 >= cases * 3,
            "only {same} of {cases} hashes identical"
        );
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
