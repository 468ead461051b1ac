# shellcheck shell=bash
# Prometheus and promtool (Debian's `prometheus` package) for scripts/infra. The test suite
# runs them itself: `promtool check/test rules` on compose/prometheus/rules (alerts::) and a
# private Prometheus scraping a test's Sluice process (dashboard::). Nothing is started here.

# prometheus_ensure_installed: install Debian's prometheus package if either binary is missing.
prometheus_ensure_installed() {
  if ! find_bin prometheus >/dev/null || ! find_bin promtool >/dev/null; then
    apt_install prometheus
    # The package's own service must not keep running (policy-rc.d stops most starts).
    if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
  fi
  find_bin prometheus >/dev/null || die "prometheus not found after installing Debian's prometheus package"
  find_bin promtool >/dev/null || die "promtool not found after installing Debian's prometheus package"
}
