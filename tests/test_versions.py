"""The one version ordering (provision/versions.py), shared by the version test, the driver table and the upgrade."""
from provision.versions import compare_versions, version_at_least, version_key


def test_order_of_driver_and_debian_versions():
    vs = ["580.95.05", "570.195.03", "580.82.07", "580.95.05~rc1", "535.288.01", "580.159.04"]
    assert sorted(vs, key=version_key) == ["535.288.01", "570.195.03", "580.82.07", "580.95.05~rc1",
                                           "580.95.05", "580.159.04"]
    assert compare_versions("1.0", "1.0.0") == -1 and compare_versions("1.0~b1", "1.0") == -1   # as LooseVersion
    assert compare_versions("2.10", "2.9") == 1 and compare_versions("1.0a", "1.0") == 1


def test_at_least():
    assert version_at_least("580.159.04", "570.26") and not version_at_least("535.230.02", "570.26")
    assert version_at_least("570.26", "570.26")
