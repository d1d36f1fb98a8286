//! Every shipped hardware profile (`hw-profiles/*.toml`) parses and validates.

use bolide_node::profile::{DeviceDriver, HardwareProfile};

#[test]
fn every_shipped_profile_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../hw-profiles");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).expect("hw-profiles/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let p = HardwareProfile::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            path.file_stem().and_then(|s| s.to_str()),
            Some(p.name.as_str()),
            "a profile's name is its file name"
        );
        names.push(p);
    }
    let get = |n: &str| {
        names
            .iter()
            .find(|p| p.name == n)
            .unwrap_or_else(|| panic!("{n}.toml is shipped"))
    };
    // The default and CI profiles run on this build; the lab example needs DPDK.
    get("dev-uring").check_supported().unwrap();
    get("ci").check_supported().unwrap();
    let lab = get("lab-2x-nvme");
    assert_eq!(lab.devices.len(), 2);
    assert!(lab.devices.iter().all(|d| d.driver == DeviceDriver::Nvme));
    assert!(lab.check_supported().is_err());
}
