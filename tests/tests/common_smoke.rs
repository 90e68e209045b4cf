use mose_tests::containerd::TestContainerd;
use std::time::Instant;

#[test]
fn smoke_start_import_run() {
    let t = Instant::now();
    let cd = TestContainerd::start().expect("start containerd");
    eprintln!("start: {:?}", t.elapsed());
    let ns = "smoke";
    let img = cd.import_test_image(ns).expect("import");
    eprintln!("import: {:?}", t.elapsed());
    let ctr = cd.ctr(ns);
    let out = ctr.run(["run", "--rm", "--runtime", &mose_tests::runtime(), &img, "s1", "sh", "-c", "echo hi; exit 3"]).unwrap();
    eprintln!("run: {:?} {:?}", t.elapsed(), out);
}
