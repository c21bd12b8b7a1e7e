//! [`write_through!`]: the `AsyncWrite` half of a stream wrapper that only
//! watches reads (the framing tap, the idle deadline, the HTTP/2 preface
//! check), written once.

/// Implements `tokio::io::AsyncWrite` for `$wrapper<S>` by handing every
/// call to its field `$inner`. With `after = method`, `self.method(cx)` runs
/// after each write and flush (not after shutdown).
macro_rules! write_through {
    ($wrapper:ident . $inner:ident $(, after = $hook:ident)?) => {
        impl<S: ::tokio::io::AsyncWrite + Unpin> ::tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                let this = self.get_mut();
                let poll = ::std::pin::Pin::new(&mut this.$inner).poll_write(cx, buf);
                $(this.$hook(cx);)?
                poll
            }

            fn poll_write_vectored(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                let this = self.get_mut();
                let poll = ::std::pin::Pin::new(&mut this.$inner).poll_write_vectored(cx, bufs);
                $(this.$hook(cx);)?
                poll
            }

            fn is_write_vectored(&self) -> bool {
                self.$inner.is_write_vectored()
            }

            fn poll_flush(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                let this = self.get_mut();
                let poll = ::std::pin::Pin::new(&mut this.$inner).poll_flush(cx);
                $(this.$hook(cx);)?
                poll
            }

            fn poll_shutdown(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.get_mut().$inner).poll_shutdown(cx)
            }
        }
    };
}

pub(crate) use write_through;
