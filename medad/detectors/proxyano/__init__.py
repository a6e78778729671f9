"""ProxyAno (Zhou et al., IEEE TMI): superpixel proxy, networks, pseudo anomalies, losses and the ``proxyano`` detector."""

from medad.detectors.proxyano.detector import ProxyAnoDetector

__all__ = ["ProxyAnoDetector"]
