use std::time::Instant;
fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let t = Instant::now();
    let (sources, d) = spaceroute::config::load::load_sources(&dir);
    eprintln!("load {:?} ({} diags)", t.elapsed(), d.len());
    let t = Instant::now();
    let config = spaceroute::config::validate::validate(sources).unwrap();
    eprintln!("validate {:?}", t.elapsed());
    let t = Instant::now();
    let snap = spaceroute::snapshot::compile(&config, |_| 1);
    eprintln!("compile {:?}", t.elapsed());
    let t = Instant::now();
    drop(snap);
    drop(config);
    eprintln!("drop {:?}", t.elapsed());
}
