fn main() {
    let path = std::env::args().nth(1).expect("path");
    let f = sleepy::loader::gguf::GgufFile::open(std::path::Path::new(&path)).unwrap();
    for (k, v) in &f.metadata {
        let s = format!("{v:?}");
        println!("{k} = {}", &s[..s.len().min(200)]);
    }
    for t in &f.tensors { println!("{} {:?} {:?} {}", t.name, t.dims, t.dtype, t.n_bytes); }
}
