package service_test

import (
	"testing"

	"github.com/nixcache/nixcache/internal/service"
)

func TestByName(t *testing.T) {
	m, err := service.ByName("systemd")
	if err != nil || m.Command() != "systemctl restart nix-daemon.service" {
		t.Errorf("systemd: %v, %v", m, err)
	}
	if _, err := service.ByName("none"); err != service.ErrNoManager {
		t.Errorf("none: %v", err)
	}
	if _, err := service.ByName("upstart"); err == nil {
		t.Error("an unknown manager was accepted")
	}
}
