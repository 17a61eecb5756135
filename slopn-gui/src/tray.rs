//! The tray icon: a disc in the colour of the state with the hub-and-spoke mark, drawn in
//! code so that every state has its icon without image files.

/// The RGB colour of a tone (`grey`, `amber`, `green`, `red`).
pub fn colour(tone: &str) -> [u8; 3] {
    match tone {
        "green" => [0x22, 0xa8, 0x5a],
        "amber" => [0xf0, 0x9a, 0x28],
        "red" => [0xd6, 0x2f, 0x3c],
        _ => [0x8a, 0x94, 0xa6],
    }
}

/// Distance from point `p` to the segment `a`-`b`.
fn to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// What covers the point (x, y) in a unit square: 0 nothing, 1 the disc, 2 the white mark.
fn paint(x: f32, y: f32) -> u8 {
    let c = (0.5, 0.5);
    let r = ((x - c.0).powi(2) + (y - c.1).powi(2)).sqrt();
    if r > 0.48 {
        return 0;
    }
    let ends = [(0.5, 0.2), (0.76, 0.65), (0.24, 0.65)];
    let mark = r < 0.13
        || ends.iter().any(|&e| {
            to_segment((x, y), c, e) < 0.045
                || ((x - e.0).powi(2) + (y - e.1).powi(2)).sqrt() < 0.085
        });
    if mark { 2 } else { 1 }
}

/// RGBA pixels of the icon, `size` by `size`, anti-aliased (4 by 4 samples a pixel).
pub fn pixels(size: u32, tone: &str) -> Vec<u8> {
    let [r, g, b] = colour(tone);
    let mut out = Vec::with_capacity((size * size * 4) as usize);
    let n = 4;
    for py in 0..size {
        for px in 0..size {
            let (mut disc, mut mark) = (0u32, 0u32);
            for sy in 0..n {
                for sx in 0..n {
                    let x = (px as f32 + (sx as f32 + 0.5) / n as f32) / size as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / n as f32) / size as f32;
                    match paint(x, y) {
                        1 => disc += 1,
                        2 => mark += 1,
                        _ => {}
                    }
                }
            }
            let covered = disc + mark;
            if covered == 0 {
                out.extend_from_slice(&[0, 0, 0, 0]);
                continue;
            }
            // Mix the disc colour with white by how much of the covered part is the mark.
            let mix = |c: u8| ((u32::from(c) * disc + 255 * mark) / covered) as u8;
            let alpha = (255 * covered / (n * n)) as u8;
            out.extend_from_slice(&[mix(r), mix(g), mix(b), alpha]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disc_has_the_tone_the_corner_is_clear_the_hub_is_white() {
        let size = 64;
        let px = pixels(size, "green");
        let at = |x: u32, y: u32| &px[((y * size + x) * 4) as usize..][..4];
        assert_eq!(at(0, 0)[3], 0, "corner transparent");
        assert_eq!(at(32, 32), [255, 255, 255, 255], "hub white");
        assert_eq!(at(10, 32)[..3], colour("green"), "disc green");
        assert_ne!(pixels(size, "red"), px);
    }
}
