//! Builds a template's images, as `esb build` will (used by bench/build/run.sh).
//!
//! usage: esb-build TEMPLATE SUPERVISOR [OUT_DIR] [--no-cache] [--dry-run] [-q]

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags: Vec<&String> = args.iter().filter(|a| a.starts_with('-')).collect();
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if pos.len() < 2 {
        eprintln!("usage: esb-build TEMPLATE SUPERVISOR [OUT_DIR] [--no-cache] [--dry-run] [-q]");
        std::process::exit(2);
    }
    let quiet = flags.iter().any(|f| *f == "-q");
    let t0 = Instant::now();
    let template =
        esb_template::load(&PathBuf::from(pos[0]), &Default::default()).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
    let mut opts = esb_image::BuildOptions::new(&template, PathBuf::from(pos[1]));
    if let Some(out) = pos.get(2) {
        opts.out_dir = PathBuf::from(out);
    }
    opts.no_cache = flags.iter().any(|f| *f == "--no-cache");
    opts.dry_run = flags.iter().any(|f| *f == "--dry-run");
    let progress = |p: &esb_image::Progress| {
        if quiet {
            return;
        }
        match p {
            esb_image::Progress::Layer {
                what,
                digest,
                size,
                cached,
            } => {
                let short = digest.get(7..19).unwrap_or("");
                eprintln!(
                    "  {} {what} {short} ({size} bytes)",
                    if *cached { "cached " } else { "built  " }
                );
            }
            esb_image::Progress::Image {
                function,
                reference,
                changed,
                ..
            } => {
                eprintln!(
                    "image {function} -> {reference}{}",
                    if *changed { "" } else { " (unchanged)" }
                );
            }
            other => eprintln!("{other:?}"),
        }
    };
    match esb_image::build(&template, &opts, &progress) {
        Ok(r) => {
            println!(
                "{} images, {} layers built, {} cached, {:.3}s",
                r.images.len(),
                r.layers_built,
                r.layers_cached,
                t0.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
