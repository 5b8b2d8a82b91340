// Command s3server is the S3-compatible server the tests start: gofakes3 with its afero
// filesystem backend, so objects live as files under -data/buckets (metadata under
// -data/metadata) and survive a restart. Not the bolt backend: its CopyObject reads the
// source's hash from bolt's memory map after a write may have remapped it, and crashes.
// It checks no signatures (any key pair is accepted); it speaks the S3 REST protocol that
// s3fs/botocore speak, path-style (http://host:port/bucket/key).
package main

import (
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3afero"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: a free one, printed on stdout)")
	data := flag.String("data", "", "folder for the objects and their metadata (required)")
	flag.Parse()
	if *data == "" {
		log.Fatal("s3server: -data is required")
	}
	root, err := s3afero.FsPath(*data, s3afero.FsPathCreateAll)
	if err != nil {
		log.Fatal(err)
	}
	files, err := s3afero.MultiBucket(root)
	if err != nil {
		log.Fatal(err)
	}
	backend := prefixes{files}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// The one line on stdout: the address actually bound, for the caller that asked for port 0.
	os.Stdout.WriteString("listening " + listener.Addr().String() + "\n")
	faker := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog()))
	log.Fatal(http.Serve(listener, rangesWithoutChecksums(faker.Server())))
}

// prefixes answers as S3 does where the afero backend, which keeps keys as paths, does not:
// a listing whose prefix names no folder (none yet, or a file: "a/b" under the key "a") is
// empty, not NoSuchBucket or an internal error; a key below a file's key is not found.
type prefixes struct{ *s3afero.MultiBucketBackend }

func (p prefixes) ListBucket(bucket string, prefix *gofakes3.Prefix, page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	list, err := p.MultiBucketBackend.ListBucket(bucket, prefix, page)
	if err != nil && (errors.Is(err, syscall.ENOTDIR) || gofakes3.HasErrorCode(err, gofakes3.ErrNoSuchBucket)) {
		if exists, _ := p.BucketExists(bucket); exists {
			return gofakes3.NewObjectList(), nil
		}
	}
	return list, err
}

func (p prefixes) HeadObject(bucket, key string) (*gofakes3.Object, error) {
	obj, err := p.MultiBucketBackend.HeadObject(bucket, key)
	if errors.Is(err, syscall.ENOTDIR) {
		return nil, gofakes3.KeyNotFound(key)
	}
	return obj, err
}

func (p prefixes) GetObject(bucket, key string, rangeRequest *gofakes3.ObjectRangeRequest) (*gofakes3.Object, error) {
	obj, err := p.MultiBucketBackend.GetObject(bucket, key, rangeRequest)
	if errors.Is(err, syscall.ENOTDIR) {
		return nil, gofakes3.KeyNotFound(key)
	}
	return obj, err
}

// rangesWithoutChecksums drops the x-amz-checksum-* headers from answers to ranged GETs, as
// S3 does: gofakes3 echoes the whole object's checksum stored at upload, which clients
// (botocore) then check against the bytes of the range, and reject.
func rangesWithoutChecksums(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			w = stripping{w}
		}
		next.ServeHTTP(w, r)
	})
}

type stripping struct{ http.ResponseWriter }

func (s stripping) strip() {
	for key := range s.Header() {
		if strings.HasPrefix(key, "X-Amz-Checksum-") {
			s.Header().Del(key)
		}
	}
}

func (s stripping) WriteHeader(code int) { s.strip(); s.ResponseWriter.WriteHeader(code) }

func (s stripping) Write(b []byte) (int, error) { s.strip(); return s.ResponseWriter.Write(b) }
