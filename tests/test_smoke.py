import vdmpp as vd


def test_public_names_import():
    assert callable(vd.losses.weighted_loss)
    assert callable(vd.losses.elbo_bpd)
    assert callable(vd.oracle.EmpiricalDenoiser)
