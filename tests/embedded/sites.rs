//! Local copies of the shapes of the example spiders' real sites: books.toscrape.com
//! and quotes.toscrape.com, the same HTML structure (class names, nesting, URL layout,
//! relative links) on a handful of pages, with the items their spiders must extract.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::common::ExpectedItem;

/// Which real site to imitate.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Books,
    Quotes,
}

/// A running local copy.
pub struct ExampleSite {
    pub base: String,
    shape: Shape,
    task: JoinHandle<()>,
}

impl Drop for ExampleSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExampleSite {
    pub async fn start(shape: Shape) -> ExampleSite {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new((shape, base.clone()));
        let app = Router::new().fallback(handle).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ExampleSite { base, shape, task }
    }

    pub fn expected_items(&self) -> Vec<ExpectedItem> {
        match self.shape {
            Shape::Books => books_items(&self.base),
            Shape::Quotes => quotes_items(&self.base),
        }
    }
}

async fn handle(State(st): State<Arc<(Shape, String)>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let page = match st.0 {
        Shape::Books => books_page(&path),
        Shape::Quotes => quotes_page(&path),
    };
    let (status, body) = match page {
        Some(body) => (StatusCode::OK, body),
        None => (StatusCode::NOT_FOUND, "<h1>Not found</h1>".to_string()),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(body))
        .expect("response")
}

fn html(body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en-us\" class=\"no-js\">\n<head><meta charset=\"utf-8\">\
         <title>All products | Books to Scrape - Sandbox</title></head>\n<body id=\"default\" \
         class=\"default\">\n<div class=\"container-fluid page\"><div class=\"page_inner\">\n{body}\n\
         </div></div>\n</body>\n</html>\n"
    )
}

// ------------------------------------------------------------------------------------
// books.toscrape.com

struct Book {
    slug: &'static str,
    n: u32,
    title: &'static str,
    price: &'static str,
    stock: u32,
    rating: &'static str,
    upc: &'static str,
    category: (&'static str, &'static str),
    description: &'static str,
    image: &'static str,
}

const BOOKS: &[Book] = &[
    Book {
        slug: "a-light-in-the-attic",
        n: 1000,
        title: "A Light in the Attic",
        price: "£51.77",
        stock: 22,
        rating: "Three",
        upc: "a897fe39b1053632",
        category: ("Poetry", "poetry_23"),
        description: "It's hard to imagine a world without A Light in the Attic.",
        image: "fe/72/fe72f0532301ec28892ae79a629a293c.jpg",
    },
    Book {
        slug: "tipping-the-velvet",
        n: 999,
        title: "Tipping the Velvet",
        price: "£53.74",
        stock: 20,
        rating: "One",
        upc: "90fa61229261140a",
        category: ("Historical Fiction", "historical-fiction_4"),
        description: "Erotic and absorbing...Written with starling power.",
        image: "08/e9/08e94f3731d7d6b760dfbfbc02ca5c62.jpg",
    },
    Book {
        slug: "soumission",
        n: 998,
        title: "Soumission",
        price: "£50.10",
        stock: 20,
        rating: "One",
        upc: "6957f44c3847a760",
        category: ("Fiction", "fiction_10"),
        description: "Dans une France assez proche de la nôtre, un homme s'engage.",
        image: "ee/cf/eecfe998905e455df12064dba399c075.jpg",
    },
    Book {
        slug: "sharp-objects",
        n: 997,
        title: "Sharp Objects",
        price: "£47.82",
        stock: 20,
        rating: "Four",
        upc: "e00eb4fd7b871a48",
        category: ("Mystery", "mystery_3"),
        description: "WICKED above her hipbone, GIRL across her heart.",
        image: "c0/59/c05972805aa7201171b8fc71a5b00292.jpg",
    },
];

fn books_page(path: &str) -> Option<String> {
    match path {
        "/" | "/index.html" => return Some(books_listing(1, "catalogue/")),
        "/catalogue/page-1.html" => return Some(books_listing(1, "")),
        "/catalogue/page-2.html" => return Some(books_listing(2, "")),
        "/catalogue/category/books/poetry_23/index.html" => {
            let pods = books_pods(&BOOKS[..1], "../../../");
            return Some(html(&format!("<div class=\"page-header action\"><h1>Poetry</h1></div>\n<ol class=\"row\">{pods}</ol>")));
        }
        _ => {}
    }
    let book = BOOKS
        .iter()
        .find(|b| path == format!("/catalogue/{}_{}/index.html", b.slug, b.n))?;
    Some(books_product(book))
}

fn books_pods(books: &[Book], prefix: &str) -> String {
    books
        .iter()
        .map(|b| {
            format!(
                "<li class=\"col-xs-6 col-sm-4 col-md-3 col-lg-3\"><article class=\"product_pod\">\n\
                 <div class=\"image_container\"><a href=\"{prefix}{slug}_{n}/index.html\"><img src=\"../media/cache/{img}\" alt=\"{t}\" class=\"thumbnail\"></a></div>\n\
                 <p class=\"star-rating {r}\"><i class=\"icon-star\"></i></p>\n\
                 <h3><a href=\"{prefix}{slug}_{n}/index.html\" title=\"{t}\">{t}</a></h3>\n\
                 <div class=\"product_price\"><p class=\"price_color\">{p}</p>\n\
                 <p class=\"instock availability\"><i class=\"icon-ok\"></i> In stock</p></div>\n\
                 </article></li>\n",
                slug = b.slug,
                n = b.n,
                img = b.image,
                t = b.title,
                r = b.rating,
                p = b.price,
            )
        })
        .collect()
}

/// Page 1 (also the home page, whose links start with `catalogue/`) and page 2.
fn books_listing(page: usize, prefix: &str) -> String {
    let books = if page == 1 { &BOOKS[..2] } else { &BOOKS[2..] };
    let side = format!(
        "<div class=\"side_categories\"><ul class=\"nav nav-list\"><li>\
         <a href=\"{prefix}category/books_1/index.html\">Books</a><ul>\n\
         <li><a href=\"{prefix}category/books/poetry_23/index.html\">Poetry</a></li>\n\
         </ul></li></ul></div>"
    );
    let pager = if page == 1 {
        format!("<li class=\"next\"><a href=\"{prefix}page-2.html\">next</a></li>")
    } else {
        "<li class=\"previous\"><a href=\"page-1.html\">previous</a></li>".to_string()
    };
    html(&format!(
        "<ul class=\"breadcrumb\"><li><a href=\"{home}index.html\">Home</a></li><li class=\"active\">All products</li></ul>\n\
         <aside class=\"sidebar col-sm-4 col-md-3\">{side}</aside>\n\
         <div class=\"col-sm-8 col-md-9\"><div class=\"page-header action\"><h1>All products</h1></div>\n\
         <section><ol class=\"row\">\n{pods}</ol>\n\
         <div><ul class=\"pager\"><li class=\"current\">Page {page} of 2</li>{pager}</ul></div></section></div>",
        home = if prefix.is_empty() { "../" } else { "" },
        pods = books_pods(books, prefix),
    ))
}

fn books_product(b: &Book) -> String {
    html(&format!(
        "<ul class=\"breadcrumb\">\n\
         <li><a href=\"../../index.html\">Home</a></li>\n\
         <li><a href=\"../category/books_1/index.html\">Books</a></li>\n\
         <li><a href=\"../category/books/{cat_path}/index.html\">{cat}</a></li>\n\
         <li class=\"active\">{t}</li>\n</ul>\n\
         <div id=\"messages\"></div>\n\
         <div class=\"content\"><div id=\"promotions\"></div><div id=\"content_inner\">\n\
         <article class=\"product_page\"><!-- Start of product page -->\n\
         <div class=\"row\">\n<div class=\"col-sm-6\">\n\
         <div id=\"product_gallery\" class=\"carousel\"><div class=\"thumbnail\"><div class=\"carousel-inner\">\
         <div class=\"item active\"><img src=\"../../media/cache/{img}\" alt=\"{t}\" /></div>\
         </div></div></div>\n</div>\n\
         <div class=\"col-sm-6 product_main\">\n<h1>{t}</h1>\n\
         <p class=\"price_color\">{p}</p>\n\
         <p class=\"instock availability\">\n    <i class=\"icon-ok\"></i>\n    \n        In stock ({stock} available)\n    \n</p>\n\
         <p class=\"star-rating {r}\">\n    <i class=\"icon-star\"></i>\n    <i class=\"icon-star\"></i>\n</p>\n\
         <hr/>\n</div>\n</div>\n\
         <div id=\"product_description\" class=\"sub-header\"><h2>Product Description</h2></div>\n\
         <p>{d}</p>\n\
         <div class=\"sub-header\"><h2>Product Information</h2></div>\n\
         <table class=\"table table-striped\">\n\
         <tr><th>UPC</th><td>{upc}</td></tr>\n\
         <tr><th>Product Type</th><td>Books</td></tr>\n\
         <tr><th>Price (excl. tax)</th><td>{p}</td></tr>\n\
         <tr><th>Availability</th><td>In stock ({stock} available)</td></tr>\n\
         </table>\n</article>\n</div></div>",
        cat_path = b.category.1,
        cat = b.category.0,
        t = b.title,
        img = b.image,
        p = b.price,
        stock = b.stock,
        r = b.rating,
        d = b.description,
        upc = b.upc,
    ))
}

fn books_items(base: &str) -> Vec<ExpectedItem> {
    BOOKS
        .iter()
        .map(|b| ExpectedItem {
            item_type: "book".into(),
            url: format!("{base}/catalogue/{}_{}/index.html", b.slug, b.n),
            data: json!({
                "title": b.title,
                "price": b.price,
                "availability": format!("In stock ({} available)", b.stock),
                "rating": format!("star-rating {}", b.rating),
                "upc": b.upc,
                "category": b.category.0,
                "description": b.description,
                "image": format!("{base}/media/cache/{}", b.image),
            }),
        })
        .collect()
}

// ------------------------------------------------------------------------------------
// quotes.toscrape.com

struct Quote {
    text: &'static str,
    author: (&'static str, &'static str),
    tags: &'static [&'static str],
}

const QUOTES: &[&[Quote]] = &[
    &[
        Quote {
            text: "“The world as we have created it is a process of our thinking.”",
            author: ("Albert Einstein", "Albert-Einstein"),
            tags: &["change", "deep-thoughts", "thinking", "world"],
        },
        Quote {
            text: "“It is our choices, Harry, that show what we truly are.”",
            author: ("J.K. Rowling", "J-K-Rowling"),
            tags: &["abilities", "choices"],
        },
    ],
    &[Quote {
        text: "“Try not to become a man of success. Rather become a man of value.”",
        author: ("Albert Einstein", "Albert-Einstein"),
        tags: &["adulthood", "success", "value"],
    }],
];

struct Author {
    slug: &'static str,
    name: &'static str,
    born: &'static str,
    location: &'static str,
    description: &'static str,
}

const AUTHORS: &[Author] = &[
    Author {
        slug: "Albert-Einstein",
        name: "Albert Einstein",
        born: "March 14, 1879",
        location: "in Ulm, Germany",
        description: "In 1879, Albert Einstein was born in Ulm, Germany.",
    },
    Author {
        slug: "J-K-Rowling",
        name: "J.K. Rowling",
        born: "July 31, 1965",
        location: "in Yate, South Gloucestershire, England, The United Kingdom",
        description: "See her website.",
    },
];

fn quotes_page(path: &str) -> Option<String> {
    let n = match path {
        "/" => 1,
        _ => match path
            .strip_prefix("/page/")
            .and_then(|r| r.strip_suffix('/'))
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if (1..=QUOTES.len()).contains(&n) => n,
            Some(_) => return Some(html("<div class=\"col-md-8\">No quotes found!</div>")),
            None => {
                let slug = path.strip_prefix("/author/")?.trim_end_matches('/');
                return AUTHORS.iter().find(|a| a.slug == slug).map(quotes_author);
            }
        },
    };
    let mut b = String::from(
        "<div class=\"row header-box\"><div class=\"col-md-8\"><h1><a href=\"/\" style=\"text-decoration: none\">Quotes to Scrape</a></h1></div>\n\
         <div class=\"col-md-4\"><p><a href=\"/login\">Login</a></p></div></div>\n<div class=\"row\"><div class=\"col-md-8\">\n",
    );
    for q in QUOTES[n - 1] {
        let tags: String = q
            .tags
            .iter()
            .map(|t| format!("<a class=\"tag\" href=\"/tag/{t}/page/1/\">{t}</a>\n"))
            .collect();
        b.push_str(&format!(
            "<div class=\"quote\" itemscope itemtype=\"http://schema.org/CreativeWork\">\n\
             <span class=\"text\" itemprop=\"text\">{text}</span>\n\
             <span>by <small class=\"author\" itemprop=\"author\">{name}</small>\n\
             <a href=\"/author/{slug}\">(about)</a>\n</span>\n\
             <div class=\"tags\">\n            Tags:\n            \
             <meta class=\"keywords\" itemprop=\"keywords\" content=\"{kw}\" /    >\n{tags}</div>\n</div>\n",
            text = q.text,
            name = q.author.0,
            slug = q.author.1,
            kw = q.tags.join(","),
        ));
    }
    b.push_str("<nav><ul class=\"pager\">\n");
    if n > 1 {
        b.push_str(&format!(
            "<li class=\"previous\"><a href=\"/page/{}/\"><span aria-hidden=\"true\">&larr;</span> Previous</a></li>\n",
            n - 1
        ));
    }
    if n < QUOTES.len() {
        b.push_str(&format!(
            "<li class=\"next\"><a href=\"/page/{}/\">Next <span aria-hidden=\"true\">&rarr;</span></a></li>\n",
            n + 1
        ));
    }
    b.push_str("</ul></nav>\n</div>\n<div class=\"col-md-4 tags-box\"><h2>Top Ten tags</h2>\
                <span class=\"tag-item\"><a class=\"tag\" style=\"font-size: 28px\" href=\"/tag/love/\">love</a></span></div>\n</div>");
    Some(html(&b))
}

fn quotes_author(a: &Author) -> String {
    html(&format!(
        "<div class=\"author-details\">\n\
         <h3 class=\"author-title\">{name}\n    </h3>\n\
         <p><strong>Born:</strong> <span class=\"author-born-date\">{born}</span> \
         <span class=\"author-born-location\">{loc}</span></p>\n\
         <p><strong>Description:</strong></p>\n\
         <div class=\"author-description\">\n        {desc}\n    </div>\n</div>",
        name = a.name,
        born = a.born,
        loc = a.location,
        desc = a.description,
    ))
}

fn quotes_items(base: &str) -> Vec<ExpectedItem> {
    let mut out = Vec::new();
    for (i, page) in QUOTES.iter().enumerate() {
        let url = if i == 0 {
            format!("{base}/")
        } else {
            format!("{base}/page/{}/", i + 1)
        };
        for q in page.iter() {
            out.push(ExpectedItem {
                item_type: "quote".into(),
                url: url.clone(),
                data: json!({
                    "text": q.text,
                    "author": q.author.0,
                    "tags": q.tags,
                    "author_url": format!("{base}/author/{}", q.author.1),
                }),
            });
        }
    }
    for a in AUTHORS {
        out.push(ExpectedItem {
            item_type: "author".into(),
            url: format!("{base}/author/{}", a.slug),
            data: json!({
                "name": a.name,
                "born": a.born,
                "born_location": a.location,
                "description": a.description,
            }),
        });
    }
    out
}

/// The key `assert_items_eq` files items under is (type, url): quotes share a page's
/// URL, so tell them apart by their text as well.
pub fn quote_key(item_type: &str, url: &str, data: &Value) -> (String, String) {
    match data.get("text").and_then(Value::as_str) {
        Some(text) if item_type == "quote" => (item_type.to_string(), format!("{url} {text}")),
        _ => (item_type.to_string(), url.to_string()),
    }
}
