package vm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/u-root/mkuimage/cpio"
)

func TestAppendModule(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.cpio")
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, []cpio.Record{cpio.StaticFile("init", "#!/bin/true\n", 0o755)}); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("x") // an unaligned end, which appendModule must pad
	if err := os.WriteFile(base, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	module := bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 1000)

	image := filepath.Join(dir, "image.cpio")
	if err := appendModule(base, module, image); err != nil {
		t.Fatalf("appendModule error: %v", err)
	}

	data, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, buf.Bytes()) {
		t.Fatal("image does not start with the base image")
	}
	offset := (buf.Len() + 3) &^ 3
	if !bytes.Equal(data[buf.Len():offset], make([]byte, offset-buf.Len())) {
		t.Errorf("padding after the base image is %q, want zero bytes", data[buf.Len():offset])
	}
	r := cpio.Newc.Reader(bytes.NewReader(data[offset:]))
	rec, err := r.ReadRecord()
	if err != nil {
		t.Fatalf("read the appended archive: %v", err)
	}
	if rec.Name != "umhblob.ko" {
		t.Errorf("appended record name = %q, want umhblob.ko", rec.Name)
	}
	if rec.Mode != cpio.S_IFREG|0o644 {
		t.Errorf("appended record mode = %#o, want a regular file with mode 0644", rec.Mode)
	}
	got, err := io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, module) {
		t.Errorf("appended module has %d bytes that differ from the %d-byte module", len(got), len(module))
	}
	// The reader returns io.EOF for the trailer record.
	if next, err := r.ReadRecord(); !errors.Is(err, io.EOF) {
		t.Errorf("record after the module = %q, %v, want the trailer", next.Name, err)
	}
	if !bytes.Contains(data[offset:], []byte(cpio.Trailer)) {
		t.Error("the appended archive has no trailer")
	}
}
