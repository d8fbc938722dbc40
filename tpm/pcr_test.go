package tpm

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func TestParsePCRs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		pcrs    []int
		bank    string
		wantErr bool
	}{
		{"7", []int{7}, "", false},
		{"7+11", []int{7, 11}, "", false},
		{"0,7", []int{0, 7}, "", false},
		{"0+1,2", []int{0, 1, 2}, "", false},
		{"11+7+7", []int{7, 11}, "", false},
		{"sha256:7", []int{7}, "sha256", false},
		{"sha1:0+7", []int{0, 7}, "sha1", false},
		{"7:sha256+11:sha256", []int{7, 11}, "sha256", false},
		{"secure-boot-policy+kernel-boot", []int{7, 11}, "", false},
		{"", nil, "", false},
		{"0-1", nil, "", true},
		{"24", nil, "", true},
		{"foo", nil, "", true},
		{"7:sha1+11:sha256", nil, "", true},
		{"7:sha256=abcd", nil, "", true},
	} {
		pcrs, bank, err := ParsePCRs(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParsePCRs(%q) error %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && (!slices.Equal(pcrs, tc.pcrs) || bank != tc.bank) {
			t.Errorf("ParsePCRs(%q) = %v %q, want %v %q", tc.in, pcrs, bank, tc.pcrs, tc.bank)
		}
	}
}

func TestMeasureVolume(t *testing.T) {
	_, tp := openSwtpm(t)
	ctx := testCtx(t)
	key := bytes.Repeat([]byte{0x42}, 64)
	const name, uuid = "root", "5cbc48ce-0e78-4c6b-ac90-a8a540514b90"
	if err := MeasureVolume(ctx, tp, VolumePCR, nil, name, uuid, key); err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("cryptsetup:root:" + uuid))
	h := sha256.New()
	h.Write(make([]byte, 32))
	h.Write(m.Sum(nil))
	want := h.Sum(nil)
	got, err := ReadPCRs(ctx, tp, tpm2.TPMAlgSHA256, []int{VolumePCR})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[VolumePCR], want) {
		t.Fatalf("PCR 15 = %x, want %x", got[VolumePCR], want)
	}
}
